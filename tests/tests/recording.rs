//! Recording and call quality end to end, with the five real binaries,
//! MariaDB, RabbitMQ and SIPp as the callee echoing our RTP (`-rtp_echo`):
//! a campaign with `record: true` places a call; its CDR carries the
//! quality measured after the jitter buffer, and its recording is
//! downloaded through storage-service (whole and by range): a stereo WAV
//! as long as the talk time (within 100 ms) whose right channel is exactly
//! the tone we sent and whose left channel is the echo we heard. Once with
//! the `file://` store and once with an S3 server.

use std::time::Duration;

use dialstack_media::g711::{linear_to_ulaw, ulaw_to_linear};
use dialstack_tests::campaigns::{completed_cdrs, wait_completed};
use dialstack_tests::procs::{Sipp, Suite, SuiteOptions};
use dialstack_tests::{amqp_url, eventually, unique};
use serde_json::{json, Value};

/// What our tone sounds like after G.711 µ-law: sample `n` of the call.
fn tone_heard(n: u64) -> i16 {
    let t = n as f64 / 8_000.0;
    let v = (2_000.0 * (2.0 * std::f64::consts::PI * 425.0 * t).sin()) as i16;
    ulaw_to_linear(linear_to_ulaw(v))
}

/// The stereo samples of a canonical 8 kHz 16-bit WAV.
fn wav_channels(bytes: &[u8]) -> (Vec<i16>, Vec<i16>) {
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
    assert_eq!(
        u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
        8_000,
        "8 kHz"
    );
    let data_len = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    assert_eq!(data_len + 44, bytes.len(), "header sizes match the file");
    let mut left = Vec::new();
    let mut right = Vec::new();
    for frame in bytes[44..].chunks_exact(4) {
        left.push(i16::from_le_bytes([frame[0], frame[1]]));
        right.push(i16::from_le_bytes([frame[2], frame[3]]));
    }
    (left, right)
}

fn rms(s: &[i16]) -> f64 {
    (s.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / s.len().max(1) as f64).sqrt()
}

async fn record_one_call(test: &str, media_env: Vec<(String, String)>) {
    let sipp = Sipp::uas(test, None, 1).await;
    let ns = unique("rec");
    let suite = Suite::start(SuiteOptions {
        test: test.into(),
        trunk: format!("sip:127.0.0.1:{}", sipp.port),
        events_url: amqp_url(&ns),
        commands_url: amqp_url(&format!("{ns}c")),
        media_env,
    })
    .await;
    let token = suite.admin_token().await;
    let http = reqwest::Client::new();
    let talk_ms = 3_000;
    let created: Value = http
        .post(format!("{}/v1/campaigns", suite.scheduler.url))
        .bearer_auth(&token)
        .json(&json!({
            "name": "recorded",
            "caller_id": "+14155550000",
            "max_concurrent": 1,
            "max_cps": 1.0,
            "talk_time_ms": talk_ms,
            "record": true,
            "calling_hours": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"},
            "recording_retention_days": 30,
            "contacts": ["+14155550101"],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["record"], true, "{created}");
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
    let call_id = cdr["call_id"].as_str().unwrap().to_owned();

    // Quality: loopback echo, nothing lost, MOS near the G.711 ceiling.
    let q = &cdr["quality"];
    assert!(q["packets_received"].as_u64().unwrap() > 100, "{q}");
    assert_eq!(q["packets_lost"], 0, "{q}");
    let mos = q["mos"].as_f64().unwrap();
    assert!((4.0..=4.5).contains(&mos), "MOS {mos}: {q}");
    assert!(q["jitter_buffer_ms"].as_f64().unwrap() >= 20.0, "{q}");

    // The recording, once call.recording.ready reached storage.
    let url = format!("{}/v1/calls/{call_id}/recording", suite.storage.url);
    let bytes = eventually("recording stored", Duration::from_secs(30), || {
        let http = http.clone();
        let url = url.clone();
        let token = token.clone();
        async move {
            let r = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() != 200 {
                return Err(format!("status {}", r.status()));
            }
            assert_eq!(r.headers()["content-type"], "audio/wav");
            Ok(r.bytes().await.map_err(|e| e.to_string())?.to_vec())
        }
    })
    .await;
    let (left, right) = wav_channels(&bytes);
    let duration_ms = right.len() as i64 / 8;
    let talk = cdr["talk_ms"].as_i64().unwrap();
    assert!(
        (duration_ms - talk).abs() <= 100,
        "recording {duration_ms} ms, talk time {talk} ms"
    );
    // Right: exactly the tone we sent, from its first sample.
    for (n, &s) in right.iter().enumerate() {
        assert_eq!(s, tone_heard(n as u64), "right channel sample {n}");
    }
    // Left: the echo, audible once the first packets came back through
    // the jitter buffer.
    let middle = &left[left.len() / 4..left.len() * 3 / 4];
    assert!(rms(middle) > 1_000.0, "echo heard: rms {}", rms(middle));
    // The CDR describes the same file.
    let rec = &cdr["recording"];
    let described = eventually("CDR recording", Duration::from_secs(10), || async {
        let v: Value = http
            .get(format!("{}/v1/calls/{call_id}", suite.storage.url))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if v["recording"].is_object() {
            Ok(v["recording"].clone())
        } else {
            Err(format!("{v} (first read: {rec})"))
        }
    })
    .await;
    assert_eq!(described["bytes"].as_u64(), Some(bytes.len() as u64));
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(described["sha256"].as_str(), Some(sha.as_str()));

    // A range: the header alone, then the last 100 bytes.
    let r = http
        .get(&url)
        .bearer_auth(&token)
        .header("Range", "bytes=0-43")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 0-43/{}", bytes.len()).as_str()
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &bytes[..44]);
    let r = http
        .get(&url)
        .bearer_auth(&token)
        .header("Range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &bytes[bytes.len() - 100..]);
    // Without a token: refused.
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_is_stored_on_the_file_store_and_served_with_ranges() {
    record_one_call("recording_file", vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_is_stored_on_the_s3_server_and_served_with_ranges() {
    let bucket = dialstack_tests::s3::fresh_bucket();
    record_one_call("recording_s3", bucket.env()).await;
    // The object is in the bucket, under the campaign's prefix.
    let mut found = Vec::new();
    let mut dirs = vec![bucket.dir()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "wav") {
                found.push(e.path());
            }
        }
    }
    assert_eq!(found.len(), 1, "one recording in the bucket: {found:?}");
}
