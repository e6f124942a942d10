//! IVR end to end with the five real binaries, MariaDB, RabbitMQ, the real
//! speech engines and SIPp as a callee who presses 1 (RFC 4733):
//!
//! - prompts: text and WAV prompts are stored, listed, served and deleted;
//!   bad uploads and bad text get 400s naming the problem, an agent 403, a
//!   second prompt of the same name 409;
//! - a campaign whose flow plays a stored prompt and gathers a key takes
//!   the caller's branch, and the CDR shows the path and `ivr_result`,
//!   searchable with `GET /v1/calls?ivr_result=`;
//! - a campaign with a broken flow is refused with the node named.

use std::time::Duration;

use dialstack_tests::campaigns::{completed_cdrs, wait_completed};
use dialstack_tests::procs::{scenario, Sipp, Suite, SuiteOptions};
use dialstack_tests::{amqp_url, unique};
use serde_json::{json, Value};

/// A mono 16-bit WAV of a 440 Hz tone at `rate` Hz, `ms` long.
fn tone_wav(rate: u32, ms: u32) -> Vec<u8> {
    let n = rate * ms / 1_000;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + n * 2).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(n * 2).to_le_bytes());
    for i in 0..n {
        let v = (8_000.0
            * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / f64::from(rate)).sin())
            as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn prompts_and_an_ivr_campaign() {
    let test = "ivr_e2e";
    let mut sipp = Sipp::uas(test, Some(scenario("uas_dtmf_1.xml")), 1).await;
    let ns = unique("ivr");
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: amqp_url(&ns),
        commands_url: amqp_url(&format!("{ns}c")),
        media_env: vec![],
    })
    .await;
    let token = suite.admin_token().await;
    let http = reqwest::Client::new();
    let media = &suite.media.url;
    let post_json = |body: Value| {
        http.post(format!("{media}/v1/prompts"))
            .bearer_auth(&token)
            .json(&body)
    };

    // Text prompts: bad input is refused, naming the field.
    for (body, field) in [
        (json!({"name": "x", "text": "Hi {first name}"}), "text"),
        (json!({"name": "x", "text": ""}), "text"),
        (
            json!({"name": "x", "text": "Hi", "voice": "en; rm -rf /"}),
            "voice",
        ),
        (json!({"name": "x", "text": "Hi", "rate": 5}), "rate"),
        (json!({"name": "", "text": "Hi"}), "name"),
    ] {
        let (status, err) = json_of(post_json(body.clone()).send().await.unwrap()).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["code"], "invalid_request", "{err}");
        assert!(
            err["message"].as_str().unwrap().starts_with(field),
            "{body}: {err}"
        );
        assert!(err["request_id"].is_string(), "{err}");
    }
    let (status, err) = json_of(
        post_json(json!({"name": "x", "txt": "typo"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["message"].as_str().unwrap().contains("txt"), "{err}");

    let (status, welcome) = json_of(
        post_json(json!({"name": "welcome", "text": "Press one for sales.", "rate": 170}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{welcome}");
    assert_eq!(welcome["kind"], "audio", "rendered at creation: {welcome}");
    assert!(welcome["duration_ms"].as_u64().unwrap() > 500, "{welcome}");
    let (status, dup) = json_of(
        post_json(json!({"name": "welcome", "text": "again"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409, "{dup}");
    let (status, personal) = json_of(
        post_json(json!({"name": "personal", "text": "Hello {first_name}."}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{personal}");
    assert_eq!(personal["kind"], "text", "rendered per call: {personal}");

    // Uploads: garbage and empty bodies are refused; a 44.1 kHz WAV is
    // stored at 8 kHz.
    let upload = |name: &str, bytes: Vec<u8>, ctype: &str| {
        http.post(format!("{media}/v1/prompts?name={name}"))
            .bearer_auth(&token)
            .header("content-type", ctype.to_owned())
            .body(bytes)
    };
    for (bytes, what) in [
        (b"this is not audio at all".to_vec(), "garbage"),
        (Vec::new(), "empty"),
        (tone_wav(8_000, 100)[..30].to_vec(), "truncated header"),
    ] {
        let (status, err) = json_of(upload("bad", bytes, "audio/wav").send().await.unwrap()).await;
        assert_eq!(status, 400, "{what}: {err}");
        assert!(
            err["message"].as_str().unwrap().starts_with("body"),
            "{what}: {err}"
        );
    }
    let (status, err) = json_of(
        upload("", tone_wav(8_000, 100), "audio/wav")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let (status, chime) = json_of(
        upload("chime", tone_wav(44_100, 700), "audio/wav")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{chime}");
    let ms = chime["duration_ms"].as_u64().unwrap();
    assert!((690..=710).contains(&ms), "{chime}");

    // An agent may not write prompts.
    let made = http
        .post(format!("{}/v1/users", suite.users.url))
        .bearer_auth(&token)
        .json(&json!({"username": "ivr-agent", "password": "ivr agent has a long password", "role": "agent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let agent = dialstack_tests::procs::login(
        &suite.users.url,
        "ivr-agent",
        "ivr agent has a long password",
    )
    .await;
    let (status, _) = json_of(
        http.post(format!("{media}/v1/prompts"))
            .bearer_auth(&agent)
            .json(&json!({"name": "mine", "text": "hi"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);

    // Served as 8 kHz WAV; a text prompt renders the query's fields.
    for id in [&chime["id"], &personal["id"]] {
        let r = http
            .get(format!(
                "{media}/v1/prompts/{}/audio?first_name=Ann",
                id.as_str().unwrap()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let wav = r.bytes().await.unwrap();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 8_000);
    }
    let list: Value = http
        .get(format!("{media}/v1/prompts"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chime", "personal", "welcome"]);
    let gone = http
        .delete(format!(
            "{media}/v1/prompts/{}",
            chime["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    let again = http
        .get(format!(
            "{media}/v1/prompts/{}",
            chime["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);

    // A broken flow is refused, naming the node.
    let campaign = |flow: Value| {
        json!({
            "name": "ivr menu",
            "caller_id": "+14155550000",
            "max_concurrent": 1,
            "max_cps": 1.0,
            "talk_time_ms": 20_000,
            "calling_hours": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"},
            "contacts": ["+14155550101"],
            "ivr_flow": flow,
        })
    };
    let (status, err) = json_of(
        http.post(format!("{}/v1/campaigns", suite.scheduler.url))
            .bearer_auth(&token)
            .json(&campaign(json!({"start": "ask", "nodes": {"ask": {"type": "play", "text": "hi", "next": "nowhere"}}})))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("ivr_flow") && msg.contains("node 'ask'") && msg.contains("nowhere"),
        "{err}"
    );

    // The menu: the stored prompt, one key, a branch.
    let flow = json!({
        "start": "ask",
        "nodes": {
            "ask": {"type": "gather", "var": "choice", "say": {"prompt": welcome["id"]},
                    "max_digits": 1, "timeout_ms": 8000, "retries": 0, "next": "route", "no_input": "bye"},
            "route": {"type": "branch", "var": "choice", "cases": {"1": "sales"}, "default": "bye"},
            "sales": {"type": "play", "text": "Connecting you to sales.", "next": "bye"},
            "bye": {"type": "hangup"}
        }
    });
    let (status, created) = json_of(
        http.post(format!("{}/v1/campaigns", suite.scheduler.url))
            .bearer_auth(&token)
            .json(&campaign(flow))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let started = http
        .post(format!("{}/v1/campaigns/{id}/start", suite.scheduler.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    wait_completed(&suite.scheduler.url, &token, &id).await;
    let cdr = completed_cdrs(&suite.storage.url, &token, &id, 1)
        .await
        .remove(0);
    assert_eq!(cdr["outcome"], "answered_human", "{cdr}");
    let ivr = &cdr["ivr"];
    assert_eq!(
        ivr["path"],
        json!(["ask", "route", "sales", "bye"]),
        "{cdr}"
    );
    assert_eq!(ivr["vars"]["choice"]["value"], "1", "{cdr}");
    assert_eq!(ivr["vars"]["choice"]["source"], "dtmf", "{cdr}");
    assert_eq!(
        sipp.wait(Duration::from_secs(30)).await,
        0,
        "SIPp got our BYE"
    );

    let found: Value = http
        .get(format!(
            "{}/v1/calls?ivr_result=choice=1&campaign_id={id}",
            suite.storage.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = found["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{found}"));
    assert_eq!(items.len(), 1, "{found}");
    let none: Value = http
        .get(format!(
            "{}/v1/calls?ivr_result=choice=2&campaign_id={id}",
            suite.storage.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["items"].as_array().map(Vec::len), Some(0), "{none}");
}
