//! IVR flows and machine detection against a real SIP peer (SIPp) with the
//! real engines (espeak-ng, pocketsphinx): SIPp plays what the callee
//! "does" from a pcap (RFC 4733 keys, in-band tones, a spoken "yes", a
//! person's or a machine's greeting), and the call's report says which way
//! the flow went. A broadcast is checked by recognising what SIPp echoed
//! back of the prompt.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::pcap::{play_scenario, ulaw_packets, write_pcap, Timed};
use common::{call, command, context, sipp};
use dialstack_contract::ivr::{AmdMode, AmdSpec, MachineAction};
use dialstack_contract::{IvrFlow, Outcome};
use media_processor::ai::asr::Grammar;
use media_processor::ai::tts::TtsRequest;
use media_processor::call::CallContext;

fn flow(v: serde_json::Value) -> Box<IvrFlow> {
    let f: IvrFlow = serde_json::from_value(v).unwrap();
    f.validate().unwrap();
    Box::new(f)
}

fn workdir(test: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-logs/ivr")
        .join(format!("{test}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A context whose calls run IVR flows with the real engines.
async fn ivr_ctx(
    trunk: std::net::SocketAddr,
    dir: &std::path::Path,
) -> (CallContext, Arc<common::engines::Engines>) {
    let (mut ctx, _stop) = context(trunk, Duration::from_millis(500)).await;
    let engines = common::engines::engines(dir);
    ctx.ivr = Some(engines.ivr.clone());
    (ctx, engines)
}

/// The keys/speech gather flow: a prompt, one key (or a yes/no), a branch.
fn menu() -> Box<IvrFlow> {
    flow(serde_json::json!({
        "start": "ask",
        "nodes": {
            "ask": {"type": "gather", "var": "choice", "say": {"text": "Press one for sales, two for support."},
                    "max_digits": 1, "timeout_ms": 6000, "retries": 0, "next": "route", "no_input": "nothing"},
            "route": {"type": "branch", "var": "choice", "cases": {"1": "sales", "2": "support"}, "default": "nothing"},
            "sales": {"type": "play", "text": "Sales.", "next": "bye"},
            "support": {"type": "play", "text": "Support.", "next": "bye"},
            "nothing": {"type": "hangup"},
            "bye": {"type": "hangup"}
        }
    }))
}

async fn run_with_pcap(
    test: &str,
    packets: Vec<Timed>,
    cmd_fn: impl FnOnce(&mut dialstack_contract::DialCommand),
) -> media_processor::call::Report {
    let dir = workdir(test);
    let pcap = dir.join("callee.pcap");
    write_pcap(&pcap, &packets);
    let peer = sipp(Some(play_scenario(&pcap))).await;
    let (ctx, _engines) = ivr_ctx(peer.addr(), &dir).await;
    let mut cmd = command(30_000, 15_000);
    cmd_fn(&mut cmd);
    let (report, _) = call(&ctx, &cmd).await;
    assert_eq!(peer.exit_code().await, 0, "SIPp got our BYE");
    report
}

#[tokio::test]
async fn rfc4733_key_takes_its_branch() {
    let dir = workdir("rfc4733");
    // SIPp's own capture of key 1 as telephone-events (payload type 101).
    let pcap = dir.join("dtmf1.pcap");
    std::fs::copy("/usr/share/sip-tester/dtmf_2833_1.pcap", &pcap)
        .expect("sip-tester's pcaps (scripts/test-env.sh installs sip-tester)");
    let peer = sipp(Some(play_scenario(&pcap))).await;
    let (ctx, engines) = ivr_ctx(peer.addr(), &dir).await;
    let mut cmd = command(30_000, 15_000);
    cmd.ivr = Some(menu());
    let (report, _) = call(&ctx, &cmd).await;
    assert_eq!(peer.exit_code().await, 0);
    let ivr = report.ivr.expect("an IVR result");
    assert_eq!(
        ivr.path,
        ["ask", "route", "sales", "bye"],
        "{ivr:?} {:?}",
        report.media
    );
    let got = &ivr.vars["choice"];
    assert_eq!((got.value.as_str(), got.source.as_str()), ("1", "dtmf"));
    assert_eq!(report.outcome, Outcome::AnsweredHuman);
    assert_eq!(engines.dtmf_count("dtmf"), 1);
}

#[tokio::test]
async fn inband_tones_take_their_branch() {
    let tones = dialstack_media::dtmf::tones("2", 120, 100, 6_000);
    let mut pcm = vec![0i16; 8 * 400];
    pcm.extend(tones);
    pcm.extend(vec![0i16; 8 * 400]);
    let report = run_with_pcap(
        "inband",
        ulaw_packets(&pcm, 0, 0x1234_5678, 100, 1_000),
        |c| c.ivr = Some(menu()),
    )
    .await;
    let ivr = report.ivr.expect("an IVR result");
    assert_eq!(ivr.path, ["ask", "route", "support", "bye"], "{ivr:?}");
    let got = &ivr.vars["choice"];
    assert_eq!((got.value.as_str(), got.source.as_str()), ("2", "inband"));
}

#[tokio::test]
async fn a_spoken_yes_is_recognised() {
    let dir = workdir("yes-corpus");
    let engines = common::engines::engines(&dir);
    let yes = engines
        .tts
        .render(&TtsRequest {
            text: "yes".into(),
            voice: "en-us".into(),
            rate_wpm: 150,
        })
        .await
        .unwrap();
    let mut pcm = vec![0i16; 8 * 600];
    pcm.extend(yes.pcm.iter());
    pcm.extend(vec![0i16; 8 * 1_500]);
    let report = run_with_pcap("yes", ulaw_packets(&pcm, 0, 0x2233_4455, 7, 9_000), |c| {
        c.ivr = Some(flow(serde_json::json!({
            "start": "confirm",
            "nodes": {
                "confirm": {"type": "gather", "var": "ok", "input": "speech", "grammar": {"kind": "yes_no"},
                            "timeout_ms": 5000, "retries": 0, "next": "route"},
                "route": {"type": "branch", "var": "ok", "cases": {"yes": "thanks", "no": "sorry"}, "default": "sorry"},
                "thanks": {"type": "hangup"},
                "sorry": {"type": "hangup"}
            }
        })))
    })
    .await;
    let ivr = report.ivr.expect("an IVR result");
    let got = &ivr.vars["ok"];
    assert_eq!(
        (got.value.as_str(), got.source.as_str()),
        ("yes", "speech"),
        "{ivr:?}"
    );
    assert!(got.confidence.is_some());
    assert_eq!(ivr.path, ["confirm", "route", "thanks"]);
}

/// A greeting rendered by espeak-ng, placed after `lead_ms` of silence and
/// followed by `tail_ms` of silence (and a beep for a machine).
async fn greeting(
    engines: &common::engines::Engines,
    text: &str,
    lead_ms: usize,
    beep: bool,
    tail_ms: usize,
) -> Vec<i16> {
    let r = engines
        .tts
        .render(&TtsRequest {
            text: text.into(),
            voice: "en-us".into(),
            rate_wpm: 170,
        })
        .await
        .unwrap();
    let mut pcm = vec![0i16; 8 * lead_ms];
    pcm.extend(r.pcm.iter().map(|s| s / 2));
    if beep {
        pcm.extend(vec![0i16; 8 * 300]);
        pcm.extend((0..8 * 400).map(|i| {
            (9_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * f64::from(i) / 8_000.0).sin()) as i16
        }));
    }
    pcm.extend(vec![0i16; 8 * tail_ms]);
    pcm
}

fn detect(on_machine: MachineAction) -> Option<AmdSpec> {
    Some(AmdSpec {
        mode: AmdMode::Detect,
        on_machine,
        message: dialstack_contract::ivr::Say {
            text: Some("Please call us back.".into()),
            ..Default::default()
        },
    })
}

#[tokio::test]
async fn a_person_is_classified_as_human() {
    let dir = workdir("amd-human-corpus");
    let engines = common::engines::engines(&dir);
    let pcm = greeting(&engines, "Hello?", 400, false, 4_000).await;
    let report = run_with_pcap("amd-human", ulaw_packets(&pcm, 0, 0x1111_2222, 1, 1), |c| {
        c.amd = detect(MachineAction::Hangup);
        c.talk_time_ms = 3_000;
    })
    .await;
    let amd = report.amd.expect("a detection result");
    assert_eq!(amd.result, "human", "{amd:?}");
    assert_eq!(report.outcome, Outcome::AnsweredHuman);
    assert!(amd.decision_ms <= 3_500, "{amd:?}");
}

#[tokio::test]
async fn a_machine_greeting_is_classified_and_gets_the_message() {
    let dir = workdir("amd-machine-corpus");
    let engines = common::engines::engines(&dir);
    let pcm = greeting(
        &engines,
        "Hi, you have reached the voicemail of John Smith. I cannot take your call right now. Please leave a message after the tone.",
        300,
        true,
        4_000,
    )
    .await;
    let report = run_with_pcap(
        "amd-machine",
        ulaw_packets(&pcm, 0, 0x3333_4444, 1, 1),
        |c| {
            c.amd = detect(MachineAction::Message);
            c.talk_time_ms = 30_000;
        },
    )
    .await;
    let amd = report.amd.expect("a detection result");
    assert_eq!(amd.result, "machine", "{amd:?}");
    assert_eq!(report.outcome, Outcome::AnsweredMachine);
    assert!(amd.decision_ms <= 3_500, "{amd:?}");
    assert!(
        amd.message_played,
        "the message was left after the beep: {amd:?}"
    );
}

#[tokio::test]
async fn a_broadcast_plays_the_rendered_prompt() {
    // SIPp echoes our RTP: what comes back is what went over the wire.
    // The call's recording keeps it (left channel), and the recognizer
    // must hear the prompt's word in it.
    let dir = workdir("broadcast");
    let peer = sipp(None).await;
    let (mut ctx, engines) = ivr_ctx(peer.addr(), &dir).await;
    let recorded = common::recorded::local_recorder(&mut ctx, &dir).await;
    let mut cmd = command(30_000, 15_000);
    cmd.record = true;
    cmd.ivr = Some(flow(serde_json::json!({
        "start": "say",
        "nodes": {
            "say": {"type": "play", "text": "{answer}", "next": "bye"},
            "bye": {"type": "hangup"}
        }
    })));
    cmd.fields = BTreeMap::from([("answer".to_owned(), "yes".to_owned())]);
    let (report, _) = call(&ctx, &cmd).await;
    assert_eq!(peer.exit_code().await, 0);
    assert_eq!(report.ivr.as_ref().unwrap().path, ["say", "bye"]);
    let wav = recorded.wait_for(&cmd).await;
    let echoed: Vec<i16> = wav[44..]
        .chunks_exact(4)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let loud = echoed
        .chunks(160)
        .filter(|f| common::recorded::rms(f) > 500.0)
        .count();
    assert!(
        loud >= 10,
        "the prompt came back from SIPp: {loud} loud frames"
    );
    let heard = engines
        .asr
        .recognize(&echoed, &Grammar::YesNo)
        .await
        .unwrap();
    assert_eq!(heard.text, "yes", "{heard:?}");
}

#[tokio::test]
async fn keys_are_sent_as_rfc4733_events() {
    use media_processor::rtp::stream::{run_stream, AudioPipe, BridgeIo, Keys, MediaContext};
    use media_processor::sip::sdp::{Direction, RemoteMedia};
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ours = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(RemoteMedia {
        addr: peer.local_addr().unwrap(),
        payload_type: 0,
        dtmf_payload_type: Some(101),
        direction: Direction::SendRecv,
    });
    let keys = Keys::new();
    let io = BridgeIo {
        heard: AudioPipe::listener(50),
        say: AudioPipe::new(50),
        keys: Some(keys.clone()),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let stream = tokio::spawn(run_stream(
        ours,
        None,
        rx,
        MediaContext::standalone(Default::default(), false),
        None,
        stop.clone(),
        Some(io),
    ));
    assert_eq!(keys.send("1,#"), 3);
    // Collect 1.5 s of packets: audio (PT 0) and events (PT 101).
    let mut events: Vec<(u32, bool, [u8; 4])> = Vec::new();
    let mut audio = 0;
    let mut buf = [0u8; 1500];
    let until = tokio::time::Instant::now() + Duration::from_millis(1_500);
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, peer.recv(&mut buf)).await {
        let pt = buf[1] & 0x7f;
        if pt == 101 {
            assert_eq!(n, 16, "an event packet is 12 + 4 bytes");
            let ts = u32::from_be_bytes(buf[4..8].try_into().unwrap());
            events.push((ts, buf[1] & 0x80 != 0, buf[12..16].try_into().unwrap()));
        } else {
            assert_eq!(pt, 0);
            audio += 1;
        }
    }
    stop.cancel();
    stream.await.unwrap();
    assert!(audio > 20, "audio goes on around the keys: {audio}");
    let mut pressed: Vec<(u32, u8)> = events.iter().map(|(ts, _, p)| (*ts, p[0])).collect();
    pressed.dedup();
    assert_eq!(
        pressed.iter().map(|p| p.1).collect::<Vec<_>>(),
        [1, 11],
        "key 1, then # after the pause: {events:?}"
    );
    for (ts, event) in &pressed {
        let pkts: Vec<_> = events.iter().filter(|e| e.0 == *ts).collect();
        assert!(pkts[0].1, "marker on the first packet of key {event}");
        let ends = pkts.iter().filter(|e| e.2[1] & 0x80 != 0).count();
        assert_eq!(ends, 3, "the end packet three times for key {event}");
        let last = u16::from_be_bytes([pkts.last().unwrap().2[2], pkts.last().unwrap().2[3]]);
        assert_eq!(last, 800, "100 ms held");
    }
    assert!(
        pressed[1].0.wrapping_sub(pressed[0].0) >= 8 * 500,
        "the ',' pause"
    );
}

/// A webhook receiver: answers 500 to the first request and 200 after,
/// keeping every request.
async fn webhook_receiver() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ivr", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        for i in 0..10 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body by Content-Length.
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            keep.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&req).to_string());
            let status = if i == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_webhook_gets_the_gathered_data_signed_and_retried() {
    let (url, seen) = webhook_receiver().await;
    let tones = dialstack_media::dtmf::tones("42#", 100, 80, 6_000);
    let mut pcm = vec![0i16; 8 * 300];
    pcm.extend(tones);
    pcm.extend(vec![0i16; 8 * 2_000]);
    let report = run_with_pcap("webhook", ulaw_packets(&pcm, 0, 0x5555_6666, 1, 1), |c| {
        c.ivr = Some(flow(serde_json::json!({
            "start": "account",
            "nodes": {
                "account": {"type": "gather", "var": "account", "max_digits": 6, "terminator": "#",
                            "timeout_ms": 3000, "retries": 0, "next": "post"},
                "post": {"type": "webhook", "url": url, "next": "bye", "on_error": "sorry"},
                "bye": {"type": "hangup"},
                "sorry": {"type": "hangup"}
            }
        })))
    })
    .await;
    let ivr = report.ivr.expect("an IVR result");
    assert_eq!(
        ivr.vars["account"].value, "42",
        "the terminator is not kept: {ivr:?}"
    );
    assert_eq!(
        ivr.path,
        ["account", "post", "bye"],
        "delivered on the retry: {ivr:?}"
    );
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "one failure, one retry");
    for r in &reqs {
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
                .unwrap_or_else(|| panic!("no {name} header in {head}"))
        };
        let ts: u64 = header("x-dialstack-timestamp").parse().unwrap();
        let want =
            media_processor::call::ivr::webhook::sign(b"test-webhook-secret", ts, body.as_bytes());
        assert_eq!(header("x-dialstack-signature"), want);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["ivr"]["vars"]["account"]["value"], "42", "{v}");
        assert_eq!(v["phone"], "+14155550101");
        assert!(header("idempotency-key").starts_with(v["call_id"].as_str().unwrap()));
    }
    // A forged signature is what a receiver must refuse: a different key
    // gives a different one.
    assert_ne!(
        media_processor::call::ivr::webhook::sign(b"someone-else", 1, b"{}"),
        media_processor::call::ivr::webhook::sign(b"test-webhook-secret", 1, b"{}")
    );
}

#[tokio::test]
async fn a_recorded_call_is_transcribed_after_it_ends() {
    let dir = workdir("transcript");
    let engines = common::engines::engines(&dir);
    let speech = engines
        .tts
        .render(&TtsRequest {
            text: "yes I would like to hear more about the offer".into(),
            voice: "en-us".into(),
            rate_wpm: 150,
        })
        .await
        .unwrap();
    let mut pcm = vec![0i16; 8 * 300];
    pcm.extend(speech.pcm.iter());
    pcm.extend(vec![0i16; 8 * 800]);
    let pcap = dir.join("callee.pcap");
    write_pcap(&pcap, &ulaw_packets(&pcm, 0, 0x7777_8888, 1, 1));
    let peer = sipp(Some(play_scenario(&pcap))).await;
    let (mut ctx, engines) = ivr_ctx(peer.addr(), &dir).await;
    let recorded = common::recorded::local_recorder(&mut ctx, &dir).await;
    recorded
        .recorder
        .set_transcriber(Arc::new(Transcribe(engines.asr.clone())));
    let mut cmd = command(4_000, 15_000);
    cmd.record = true;
    cmd.transcribe = true;
    let (report, _) = call(&ctx, &cmd).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman);
    assert_eq!(peer.exit_code().await, 0);
    let t = recorded.transcript_of(&cmd).await;
    t.validate().unwrap();
    assert!(t.engine.starts_with("pocketsphinx"), "{t:?}");
    assert!((3.5..=4.6).contains(&t.audio_seconds), "{t:?}");
    assert!(!t.text.trim().is_empty(), "the callee's words: {t:?}");
}

struct Transcribe(Arc<media_processor::ai::asr::Asr>);

#[async_trait::async_trait]
impl media_processor::recording::Transcriber for Transcribe {
    async fn transcribe(&self, pcm: &[i16]) -> anyhow::Result<(String, Option<f32>)> {
        let r = self.0.transcribe(pcm).await?;
        Ok((r.text, Some(r.confidence)))
    }

    fn engine(&self) -> String {
        self.0.engine_name()
    }
}
