//! Recordings against real parts: the recording store on the s3s-fs S3
//! server (put, head, ranges, delete, key and URL checks, a start-up probe
//! that stops storage-service on bad credentials naming the variable), and
//! storage-service in process fed through RabbitMQ: a `call.completed` with
//! quality and a `call.recording.ready` for a WAV in the bucket make a CDR
//! whose recording downloads whole and by range, only for those who may
//! read the call; malformed `call.recording.ready` events are dead-lettered
//! without a row; the retention sweep deletes an expired recording.

use std::time::Duration;

use dialstack_common::bus::{Channel, OutMessage, EVENTS};
use dialstack_common::config::Env;
use dialstack_common::events::CloudEvent;
use dialstack_common::recordings::{RecordingError, RecordingStore};
use dialstack_common::service::Service;
use dialstack_contract::{types, CallEvent, CallRef, Outcome, Quality, RecordingReady};
use dialstack_tests::s3::{fresh_bucket, Bucket};
use dialstack_tests::users::Users;
use dialstack_tests::CallEventData;
use dialstack_tests::{amqp_url, eventually, fresh_sqlite_url, in_process, typed, unique};
use futures_util::TryStreamExt;
use serde_json::{json, Value};
use sha2::Digest;

fn env_of(bucket: &Bucket) -> Env {
    Env::from_pairs(bucket.env())
}

fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A canonical stereo 8 kHz 16-bit WAV of `ms` milliseconds of a ramp.
fn wav(ms: u32) -> Vec<u8> {
    let frames = 8 * ms;
    let data_len = frames * 4;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&8_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for n in 0..frames {
        let s = (n % 2_000) as i16 * 7;
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&(-s).to_le_bytes());
    }
    out
}

fn temp_file(data: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(unique("dialstack-wav-"));
    std::fs::write(&path, data).unwrap();
    path
}

#[tokio::test]
async fn the_store_works_against_the_s3_server_and_refuses_forged_urls() {
    let bucket = fresh_bucket();
    let store = RecordingStore::from_env(&env_of(&bucket)).unwrap();
    store.check().await.expect("probe against s3s-fs");
    let data = wav(500);
    let local = temp_file(&data);
    let key = "k1/call-1.wav";
    assert_eq!(
        store.put_file(key, &local).await.unwrap(),
        data.len() as u64
    );
    let url = store.url_for(key);
    assert_eq!(url, format!("{}/{key}", bucket.url));
    // s3s-fs keeps the object as a file of the bucket's folder.
    assert_eq!(
        std::fs::read(bucket.dir().join("recordings").join(key)).unwrap(),
        data
    );
    assert_eq!(store.head(&url).await.unwrap(), data.len() as u64);
    assert_eq!(&store.get_bytes(&url).await.unwrap()[..], &data[..]);
    let part = store.get_range(&url, Some(40..140)).await.unwrap();
    assert_eq!(
        (part.range.clone(), part.total),
        (40..140, data.len() as u64)
    );
    let ranged: Vec<bytes::Bytes> = part.stream.try_collect().await.unwrap();
    assert_eq!(&ranged.concat()[..], &data[40..140]);
    assert_eq!(
        store.get_bytes(key).await.unwrap().len(),
        data.len(),
        "by key"
    );

    // URLs outside the store and unsafe keys are refused before any request.
    for forged in [
        format!("s3://{}/elsewhere/x.wav", bucket.name),
        format!("{}/../x.wav", bucket.url),
        format!("{}/k1/.hidden", bucket.url),
        "s3://another-bucket/recordings/k1/call-1.wav".to_owned(),
        format!("file:///tmp/dialstack-s3/{}/recordings/{key}", bucket.name),
    ] {
        let err = store.head(&forged).await.unwrap_err();
        assert!(
            matches!(
                err,
                RecordingError::Foreign(_) | RecordingError::BadKey { .. }
            ),
            "{forged}: {err}"
        );
        assert!(!store.owns(&forged), "{forged}");
    }
    for bad in ["", "a//b", "../x", "a b.wav", "x/..", "%2e%2e/x"] {
        assert!(store.put_file(bad, &local).await.is_err(), "{bad:?}");
    }

    store.delete(&url).await.unwrap();
    assert!(matches!(
        store.head(&url).await,
        Err(RecordingError::NotFound)
    ));
    store.delete(&url).await.expect("deleting twice is fine");
    std::fs::remove_file(&local).unwrap();

    // Wrong credentials: the probe fails, and storage-service does not
    // start, with one line naming the variable.
    let mut env = env_of(&bucket);
    env.set("DIALSTACK_S3_SECRET_ACCESS_KEY", "wrong");
    let wrong = RecordingStore::from_env(&env).unwrap();
    assert!(wrong.check().await.is_err());
    for (k, v) in [
        ("DIALSTACK_DATABASE_URL", fresh_sqlite_url()),
        ("DIALSTACK_EVENTS_URL", format!("memory://{}", unique("s3"))),
        ("DIALSTACK_COMMANDS_URL", "memory://unused".into()),
        ("DIALSTACK_JWKS_URL", "http://127.0.0.1:1/jwks".into()),
    ] {
        env.set(k, v);
    }
    let config = storage_service::Application::config(&env).unwrap();
    let err = match storage_service::Application::build(
        config,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    {
        Ok(_) => panic!("storage-service started with a wrong S3 secret"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.starts_with("DIALSTACK_RECORDINGS_URL: "), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let err = RecordingStore::from_env(&Env::from_pairs([(
        "DIALSTACK_RECORDINGS_URL",
        "s3:/no-bucket",
    )]))
    .unwrap_err();
    assert_eq!(err.var, "DIALSTACK_RECORDINGS_URL", "{err}");
}

/// An agent without a profile: (id, token).
async fn agent(users: &Users, admin: &str, name: &str) -> (String, String) {
    let (id, password) = users.user(admin, name, "agent", &[]).await;
    (id, users.token(name, &password).await)
}

async fn publish(channel: &Channel, ty: &str, call_id: &str, data: &impl serde::Serialize) {
    let ev = CloudEvent::new("media-processor", ty, call_id, data);
    channel
        .publish(&OutMessage {
            id: ev.id.clone(),
            routing_key: ev.ty.clone(),
            key: call_id.to_owned(),
            payload: ev.to_bytes(),
        })
        .await
        .unwrap();
}

fn completed(call_id: &str, agent_id: &str, mos: f64) -> Value {
    let mut ev = typed(
        types::CALL_COMPLETED,
        &CallEventData {
            call_id: call_id.into(),
            attempt_id: uuid::Uuid::now_v7().to_string(),
            campaign_id: "k1".into(),
            phone: "+14155550101".into(),
            at_ms: dialstack_common::now_ms(),
            outcome: Some(Outcome::AnsweredHuman),
            sip_status: Some(200),
            talk_ms: Some(1000),
            agent_id: Some(agent_id.into()),
            ..Default::default()
        },
    );
    if let CallEvent::Completed(c) = &mut ev {
        c.quality = Some(Quality {
            packets_received: 50,
            packets_lost: 2,
            jitter_ms_mean: 4.0,
            jitter_ms_max: 11.0,
            jitter_buffer_ms: 40.0,
            r_factor: 62.0,
            mos,
            ..Default::default()
        });
    }
    ev.to_value()
}

fn ready(call_id: &str, url: String, data: &[u8]) -> RecordingReady {
    RecordingReady {
        call: CallRef {
            call_id: call_id.into(),
            attempt_id: uuid::Uuid::now_v7().to_string(),
            campaign_id: "k1".into(),
            phone: "+14155550101".into(),
            at_ms: dialstack_common::now_ms(),
            team: None,
        },
        url,
        duration_ms: 1000,
        bytes: data.len() as u64,
        sha256: sha256_hex(data),
        retention_days: Some(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_served_by_range_to_who_may_read_the_call_and_expire() {
    let bucket = fresh_bucket();
    let store = RecordingStore::from_env(&env_of(&bucket)).unwrap();
    let events = amqp_url(&unique("recapi"));
    let users = Users::start(
        &fresh_sqlite_url(),
        &format!("memory://{}", unique("recusers")),
    )
    .await;
    let jwks = format!("{}/.well-known/jwks.json", users.url);
    let database = fresh_sqlite_url();
    let mut vars: Vec<(String, String)> = bucket.env();
    vars.extend([
        ("DIALSTACK_DATABASE_URL".to_owned(), database.clone()),
        ("DIALSTACK_EVENTS_URL".to_owned(), events.clone()),
        (
            "DIALSTACK_COMMANDS_URL".to_owned(),
            "memory://unused".into(),
        ),
        ("DIALSTACK_JWKS_URL".to_owned(), jwks),
    ]);
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let storage = in_process::<storage_service::Application>(&pairs).await;
    let http = reqwest::Client::new();
    let admin = users.admin().await;
    let (alice, alice_token) = agent(&users, &admin, "alice").await;
    let (_bob, bob_token) = agent(&users, &admin, "bob").await;

    // A call bridged to alice, its recording in the bucket, both announced
    // through RabbitMQ; and two calls whose recording.ready breaks the rules.
    let data = wav(1000);
    let call = uuid::Uuid::now_v7().to_string();
    let key = format!("k1/{call}.wav");
    let local = temp_file(&data);
    store.put_file(&key, &local).await.unwrap();
    std::fs::remove_file(&local).unwrap();
    let channel = Channel::connect(&events, EVENTS).await.unwrap();
    publish(
        &channel,
        types::CALL_COMPLETED,
        &call,
        &completed(&call, &alice, 3.2),
    )
    .await;
    publish(
        &channel,
        types::RECORDING_READY,
        &call,
        &ready(&call, store.url_for(&key), &data),
    )
    .await;
    let bad_sha = uuid::Uuid::now_v7().to_string();
    let foreign = uuid::Uuid::now_v7().to_string();
    for (id, mos) in [(&bad_sha, 4.1), (&foreign, 4.2)] {
        publish(
            &channel,
            types::CALL_COMPLETED,
            id,
            &completed(id, &alice, mos),
        )
        .await;
    }
    let mut broken = ready(&bad_sha, store.url_for(&key), &data);
    broken.sha256 = "not-a-digest".into();
    publish(&channel, types::RECORDING_READY, &bad_sha, &broken).await;
    let outside = ready(&foreign, format!("file:///etc/{foreign}.wav"), &data);
    publish(&channel, types::RECORDING_READY, &foreign, &outside).await;

    let get = |path: String, token: Option<String>, range: Option<&'static str>| {
        let mut r = http.get(format!("{}{path}", storage.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(range) = range {
            r = r.header("Range", range);
        }
        r.send()
    };
    let cdr: Value = eventually(
        "CDR with its recording",
        Duration::from_secs(20),
        || async {
            let v: Value = get(format!("/v1/calls/{call}"), Some(admin.clone()), None)
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if v["recording"].is_object() && v["quality"].is_object() {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    let sha = sha256_hex(&data);
    assert_eq!(
        cdr["recording"],
        json!({"duration_ms": 1000, "bytes": data.len(), "sha256": sha,
               "href": format!("/v1/calls/{call}/recording")}),
        "{cdr}"
    );
    assert!(
        !cdr.to_string().contains("s3://"),
        "the store URL stays inside: {cdr}"
    );
    assert_eq!(cdr["quality"]["mos"], 3.2, "{cdr}");
    assert_eq!(cdr["quality"]["packets_lost"], 2, "{cdr}");

    // The whole file, then ranges.
    let href = format!("/v1/calls/{call}/recording");
    let r = get(href.clone(), Some(admin.clone()), None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "audio/wav");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    let len = data.len();
    for (range, want) in [
        ("bytes=0-43", 0..44),
        ("bytes=1000-1999", 1000..2000),
        ("bytes=-100", len - 100..len),
        ("bytes=30000-", 30000..len),
    ] {
        let r = get(href.clone(), Some(admin.clone()), Some(range))
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {}-{}/{len}", want.start, want.end - 1).as_str(),
            "{range}"
        );
        assert_eq!(&r.bytes().await.unwrap()[..], &data[want], "{range}");
    }
    let r = get(href.clone(), Some(admin.clone()), Some("bytes=999999-"))
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "range_not_satisfiable", "{body}");
    // Several ranges: the whole file (documented).
    let r = get(href.clone(), Some(admin.clone()), Some("bytes=0-1,4-5"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Alice's call: alice reads it, bob gets 404 as for a call that is not
    // there, no token gets 401.
    let r = get(href.clone(), Some(alice_token.clone()), Some("bytes=0-3"))
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], b"RIFF");
    for path in [href.clone(), format!("/v1/calls/{call}")] {
        let r = get(path.clone(), Some(bob_token.clone()), None)
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "not_found", "{path}: {body}");
    }
    let r = get(href.clone(), None, None).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = get(
        format!("/v1/calls/{}/recording", uuid::Uuid::now_v7()),
        Some(admin.clone()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);

    // mos_below: validated, then filters.
    for bad in ["abc", "7", "0.5", "NaN", ""] {
        let r = get(
            format!("/v1/calls?mos_below={bad}"),
            Some(admin.clone()),
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "invalid_request", "{body}");
        assert!(
            body["message"].as_str().unwrap().starts_with("mos_below"),
            "{body}"
        );
        assert!(!body["request_id"].as_str().unwrap().is_empty());
    }
    let page: Value = get("/v1/calls?mos_below=3.5".into(), Some(admin.clone()), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [call.as_str()], "{page}");

    // The malformed announcements were dead-lettered and stored nothing.
    let dead = eventually("two dead letters", Duration::from_secs(20), || async {
        let dead = channel
            .dead_letters(storage_service::NAME, 10)
            .await
            .map_err(|e| e.to_string())?;
        if dead.len() >= 2 {
            Ok(dead)
        } else {
            Err(format!("{} dead letters", dead.len()))
        }
    })
    .await;
    assert_eq!(dead.len(), 2);
    let mut dead_calls: Vec<String> = dead
        .iter()
        .map(|d| {
            let ev = CloudEvent::from_slice(&d.payload).unwrap();
            assert_eq!(ev.ty, types::RECORDING_READY);
            ev.subject.unwrap()
        })
        .collect();
    dead_calls.sort();
    let mut want = vec![bad_sha.clone(), foreign.clone()];
    want.sort();
    assert_eq!(dead_calls, want);
    for id in [&bad_sha, &foreign] {
        let cdr: Value = get(format!("/v1/calls/{id}"), Some(admin.clone()), None)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(cdr["outcome"], "answered_human", "{cdr}");
        assert!(cdr["recording"].is_null(), "{cdr}");
        let r = get(
            format!("/v1/calls/{id}/recording"),
            Some(admin.clone()),
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 404);
    }

    // Retention: once its time has passed, one sweep pass deletes the
    // object and then the row.
    let repo = storage_service::db::Repo {
        db: dialstack_common::db::Db::connect(&database).await.unwrap(),
    };
    let sweeper = storage_service::retention::Sweeper {
        repo: repo.clone(),
        store: store.clone(),
        deleted: storage_service::retention::Sweeper::counter().unwrap(),
        cdr_retention_days: None,
        recording_retention_days: None,
    };
    assert_eq!(
        sweeper.sweep_once().await.unwrap(),
        0,
        "nothing expired yet"
    );
    repo.postpone_recording_delete(&call, dialstack_common::now_ms() - 1)
        .await
        .unwrap();
    assert_eq!(sweeper.sweep_once().await.unwrap(), 1);
    assert_eq!(sweeper.deleted.with_label_values(&["recording"]).get(), 1);
    assert!(matches!(
        store.head(&key).await,
        Err(RecordingError::NotFound)
    ));
    assert!(!bucket.dir().join("recordings").join(&key).exists());
    assert!(repo.recording(&call).await.unwrap().is_none());
    let r = get(href.clone(), Some(admin.clone()), None).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(sweeper.sweep_once().await.unwrap(), 0);
    let metrics = http
        .get(format!("{}/metrics", storage.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dialstack_storage_deleted_total{kind=\"recording\"}"),
        "{metrics}"
    );
}
