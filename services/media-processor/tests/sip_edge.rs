//! The SIP edge against real peers (SIPp) and forgers: Digest challenges
//! (401, 407, refused twice), early media then the callee's BYE, hold and
//! resume by re-INVITE with RTP watched, a record-routing proxy in the path,
//! responses and BYEs forged from another port, a 200 that crosses our
//! CANCEL, hang-up and shutdown of ringing and answered calls, and garbage
//! sprayed at the SIP port during a call.

mod common;

use std::time::{Duration, Instant};

use common::{
    call, call_until, command, context, context_tcp, context_with, header, scenario, sipp,
    sipp_with, Proxy,
};
use dialstack_contract::{FailReason, Outcome};
use media_processor::call::Progress;
use media_processor::sip::digest::Credentials;
use media_processor::sip::transport::DropReason;
use tokio_util::sync::CancellationToken;

const T1: Duration = Duration::from_millis(100);

fn creds(password: &str) -> Option<Credentials> {
    Some(Credentials {
        username: "trunkuser".into(),
        password: password.into(),
    })
}

/// The digest scenario as a 401 (as written) or turned into a 407.
fn auth_scenario(proxy: bool) -> std::path::PathBuf {
    let path = scenario("uas_auth.xml");
    if !proxy {
        return path;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "SIP/2.0 401 Unauthorized",
            "SIP/2.0 407 Proxy Authentication Required",
        )
        .replace("WWW-Authenticate:", "Proxy-Authenticate:")
        // SIPp's verifyauth reads Authorization only: for the 407 the header
        // and the user are checked here, the digest itself by the 401 test.
        .replace(
            r#"<verifyauth assign_to="authvalid" username="trunkuser" password="trunk secret" />"#,
            r#"<ereg regexp="Proxy-Authorization: Digest username=.trunkuser., realm=.dialstack.test., nonce=[^,]+, uri=[^,]+, algorithm=MD5, qop=auth, nc=00000001" search_in="msg" check_it="true" assign_to="proxyauth" />"#,
        )
        .replace(
            r#"<nop hide="true" test="authvalid" next="goodauth" />"#,
            r#"<nop hide="true" next="goodauth" />"#,
        )
        .replace("</scenario>", r#"<Reference variables="proxyauth" /></scenario>"#);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-logs/sipp_peer");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("uas_auth_407.xml");
    std::fs::write(&out, text).unwrap();
    out
}

async fn challenged(proxy: bool, password: &str) -> (media_processor::call::Report, i32) {
    let peer = sipp(Some(auth_scenario(proxy))).await;
    let (ctx, _stop) = context_with(peer.addr(), T1, creds(password)).await;
    let (report, _) = call(&ctx, &command(300, 15_000)).await;
    (report, peer.exit_code().await)
}

#[tokio::test]
async fn digest_401_is_answered_with_authorization() {
    let (report, sipp) = challenged(false, "trunk secret").await;
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::AnsweredHuman, Some(200)),
        "{report:?}"
    );
    assert_eq!(sipp, 0, "SIPp verified our credentials and got our BYE");
}

#[tokio::test]
async fn digest_407_is_answered_with_proxy_authorization() {
    let (report, sipp) = challenged(true, "trunk secret").await;
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::AnsweredHuman, Some(200)),
        "{report:?}"
    );
    assert_eq!(sipp, 0);
}

#[tokio::test]
async fn wrong_password_is_refused_by_the_carrier() {
    let (report, sipp) = challenged(false, "not the secret").await;
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::Rejected, Some(403)),
        "{report:?}"
    );
    assert_eq!(sipp, 0, "SIPp got the ACK of its 403");
}

#[tokio::test]
async fn a_second_challenge_fails_the_call_as_trunk_auth() {
    let peer = sipp(Some(scenario("uas_auth_twice.xml"))).await;
    let (ctx, _stop) = context_with(peer.addr(), T1, creds("trunk secret")).await;
    let (report, _) = call(&ctx, &command(300, 15_000)).await;
    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(report.reason, Some(FailReason::TrunkAuth));
    assert_eq!(report.sip_status, Some(401));
    assert_eq!(
        peer.exit_code().await,
        0,
        "both challenges acknowledged, credentials sent once"
    );
}

#[tokio::test]
async fn a_challenge_without_credentials_fails_as_trunk_auth() {
    let peer = sipp(Some(scenario("uas_auth_twice.xml"))).await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    let (report, _) = call(&ctx, &command(300, 15_000)).await;
    assert_eq!(
        (report.outcome, report.reason),
        (Outcome::Failed, Some(FailReason::TrunkAuth))
    );
}

#[tokio::test]
async fn early_media_then_the_callee_hangs_up() {
    let peer = sipp(Some(scenario("uas_early_media_bye.xml"))).await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    let started = Instant::now();
    let (report, progress) = call(&ctx, &command(10_000, 15_000)).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert!(
        report.talk_ms < 5_000,
        "the callee's BYE ended the call: {report:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        progress[..2],
        [Progress::Dialing, Progress::Ringing],
        "183 counts as ringing"
    );
    assert_eq!(peer.exit_code().await, 0, "SIPp got the 200 to its BYE");
}

#[tokio::test]
async fn hold_and_resume_by_reinvite_stop_and_restart_our_audio() {
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp_port = rtp.local_addr().unwrap().port().to_string();
    let peer = sipp_with(
        Some(scenario("uas_reinvite_hold.xml")),
        &["-key", "rtpport", &rtp_port],
    )
    .await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    let cmd = command(15_000, 15_000);
    let arrivals = tokio::spawn(async move {
        let mut at = Vec::new();
        let mut buf = [0u8; 2048];
        let t0 = Instant::now();
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(6), rtp.recv_from(&mut buf)).await
        {
            at.push(t0.elapsed());
            if at.len() > 1_000 {
                break;
            }
        }
        at
    });
    let (report, _) = call(&ctx, &cmd).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert_eq!(
        peer.exit_code().await,
        0,
        "SIPp saw recvonly then sendrecv answers with SDP"
    );
    let at = arrivals.await.unwrap();
    // Held for 1.2 s: one silence of at least 0.9 s between audio before and after.
    let longest = at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    assert!(
        longest >= Duration::from_millis(900),
        "no silence while held: longest gap {longest:?}"
    );
    let gap_end = at
        .windows(2)
        .find(|w| w[1] - w[0] == longest)
        .map(|w| w[1])
        .unwrap();
    let after = at.iter().filter(|t| **t > gap_end).count();
    assert!(
        after >= 15,
        "audio resumed after the resume: {after} packets"
    );
    assert!(
        at.iter().filter(|t| **t < gap_end - longest).count() >= 15,
        "audio before the hold"
    );
}

#[tokio::test]
async fn ack_and_bye_follow_the_record_route_proxy() {
    let peer = sipp(Some(scenario("uas_record_route.xml"))).await;
    let proxy = Proxy::start(peer.addr(), true).await;
    let (ctx, _stop) = context(proxy.addr, T1).await;
    let (report, _) = call(&ctx, &command(500, 15_000)).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    let sipp_port = peer.port;
    assert_eq!(peer.exit_code().await, 0, "SIPp got ACK and BYE");
    let me = format!("<sip:{};lr>", proxy.addr);
    for method in ["ACK ", "BYE "] {
        let seen = proxy.sent_by_caller(method);
        assert_eq!(seen.len(), 1, "{method}through the proxy");
        assert_eq!(
            header(&seen[0], "Route").as_deref(),
            Some(me.as_str()),
            "{}",
            seen[0]
        );
        assert!(
            seen[0].starts_with(&format!("{method}sip:callee@127.0.0.1:{sipp_port}")),
            "{}",
            seen[0]
        );
    }
}

/// Replaces the first line of `text` and returns it as bytes.
fn forge(text: &str, first_line: &str, extra_before_blank: &str) -> Vec<u8> {
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    let mut lines: Vec<&str> = head.lines().collect();
    lines[0] = first_line;
    lines.retain(|l| !l.starts_with("Content-Length") && !l.starts_with("Content-Type"));
    format!(
        "{}\r\n{extra_before_blank}Content-Length: 0\r\n\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

#[tokio::test]
async fn responses_and_bye_forged_from_another_port_are_dropped() {
    let peer = sipp(Some(scenario("uas_ring_then_answer.xml"))).await;
    let tap = Proxy::start(peer.addr(), false).await;
    let (ctx, _stop) = context(tap.addr, T1).await;
    let sip = ctx.transport.local_addr().unwrap();
    let forger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cmd = command(2_500, 15_000);
    let attack = {
        let seen = tap.seen.clone();
        async move {
            // The INVITE as the trunk saw it: the forger knows everything but
            // cannot send from the trunk's address.
            let invite = loop {
                let found = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, t)| t.starts_with("INVITE "))
                    .map(|(_, t)| t.clone());
                if let Some(i) = found {
                    break i;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let to = header(&invite, "To").unwrap();
            let busy = forge(&invite, "SIP/2.0 486 Busy Here", "")
                .into_iter()
                .collect::<Vec<u8>>();
            let busy = String::from_utf8(busy)
                .unwrap()
                .replace(&format!("To: {to}"), &format!("To: {to};tag=forged"));
            forger.send_to(busy.as_bytes(), sip).await.unwrap();
            // Once answered, a BYE with the real tags from elsewhere.
            let ok = loop {
                let found = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(d, t)| d == "from_callee" && t.starts_with("SIP/2.0 200"))
                    .map(|(_, t)| t.clone());
                if let Some(o) = found {
                    break o;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let callee_tag = header(&ok, "To").unwrap();
            let caller_from = header(&ok, "From").unwrap();
            let call_id = header(&ok, "Call-ID").unwrap();
            let bye = format!(
                "BYE sip:dialstack@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKforged\r\nFrom: {callee_tag}\r\nTo: {caller_from}\r\nCall-ID: {call_id}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
                forger.local_addr().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            forger.send_to(bye.as_bytes(), sip).await.unwrap();
            // Nothing comes back to the forger.
            let mut buf = [0u8; 2048];
            tokio::time::timeout(Duration::from_millis(500), forger.recv_from(&mut buf))
                .await
                .is_err()
        }
    };
    let ((report, _), silent) = tokio::join!(call(&ctx, &cmd), attack);
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::AnsweredHuman, Some(200)),
        "{report:?}"
    );
    assert!(
        report.talk_ms >= 2_400,
        "the forged BYE did not end the call: {report:?}"
    );
    assert!(silent, "no answer was reflected to the forger");
    assert!(ctx.transport.metrics().dropped(DropReason::UnknownSource) >= 2);
    assert_eq!(peer.exit_code().await, 0, "SIPp got our real BYE");
}

#[tokio::test]
async fn a_response_from_the_trunk_for_another_transaction_is_dropped() {
    let peer = sipp(Some(scenario("uas_ring_then_answer.xml"))).await;
    let tap = Proxy::start(peer.addr(), false).await;
    let (ctx, _stop) = context(tap.addr, T1).await;
    let sip = ctx.transport.local_addr().unwrap();
    let inject = async {
        let invite = loop {
            let found = tap.sent_by_caller("INVITE ").first().cloned();
            if let Some(i) = found {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut lines: Vec<String> = invite.split("\r\n").map(str::to_owned).collect();
        // Right source, Call-ID and CSeq, wrong branch.
        let via = lines.iter().position(|l| l.starts_with("Via:")).unwrap();
        lines[via] = format!("Via: SIP/2.0/UDP {sip};branch=z9hG4bKnotours");
        let busy = forge(&lines.join("\r\n"), "SIP/2.0 486 Busy Here", "");
        tap.sock.send_to(&busy, sip).await.unwrap();
    };
    let cmd = command(300, 15_000);
    let ((report, _), ()) = tokio::join!(call(&ctx, &cmd), inject);
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert_eq!(
        ctx.transport.metrics().dropped(DropReason::NoTransaction),
        1
    );
    assert_eq!(peer.exit_code().await, 0);
}

#[tokio::test]
async fn a_200_crossing_our_cancel_is_acknowledged_and_hung_up() {
    let peer = sipp(Some(scenario("uas_cancel_200_race.xml"))).await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    let (report, _) = call(&ctx, &command(5_000, 800)).await;
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::NoAnswer, Some(200)),
        "{report:?}"
    );
    assert_eq!(
        peer.exit_code().await,
        0,
        "SIPp got the ACK of its 200 and our BYE"
    );
}

#[tokio::test]
async fn hang_up_cancels_a_ringing_call() {
    let peer = sipp(Some(scenario("ring_then_487_on_cancel.xml"))).await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    let hangup = CancellationToken::new();
    let h = hangup.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.cancel();
    });
    let (report, _) = call_until(
        &ctx,
        &command(5_000, 15_000),
        hangup,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::Canceled, Some(487)),
        "{report:?}"
    );
    assert_eq!(peer.exit_code().await, 0);
}

#[tokio::test]
async fn shutdown_cancels_ringing_calls_and_lets_answered_ones_finish_with_bye() {
    let ringing = sipp(Some(scenario("ring_then_487_on_cancel.xml"))).await;
    let answered = sipp(None).await;
    let (ctx_r, _s1) = context(ringing.addr(), T1).await;
    let (ctx_a, _s2) = context(answered.addr(), T1).await;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.cancel();
    });
    let started = Instant::now();
    let (c1, c2) = (command(60_000, 30_000), command(60_000, 30_000));
    let ((r1, _), (r2, _)) = tokio::join!(
        call_until(&ctx_r, &c1, CancellationToken::new(), shutdown.clone()),
        call_until(&ctx_a, &c2, CancellationToken::new(), shutdown.clone()),
    );
    assert_eq!(
        (r1.outcome, r1.sip_status),
        (Outcome::Canceled, Some(487)),
        "{r1:?}"
    );
    assert_eq!(r2.outcome, Outcome::AnsweredHuman, "{r2:?}");
    // The answered call got the drain talk time (1 s here), not its 60 s.
    assert!(
        r2.talk_ms >= 1_000 && started.elapsed() < Duration::from_secs(10),
        "{r2:?}"
    );
    assert_eq!(ringing.exit_code().await, 0);
    assert_eq!(answered.exit_code().await, 0, "SIPp got our BYE");
}

#[tokio::test]
async fn garbage_at_the_sip_port_does_not_disturb_a_call() {
    let peer = sipp(None).await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    let sip = ctx.transport.local_addr().unwrap();
    let sprayer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cmd = command(1_500, 15_000);
    let call_id = cmd.call_id.clone();
    let spray = async {
        let mut rng = fastrand::Rng::with_seed(7);
        let base = format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\naé");
        for i in 0..5_000u32 {
            let mut d = base.clone().into_bytes();
            match i % 4 {
                0 => d.truncate(rng.usize(..d.len())),
                1 => {
                    let at = rng.usize(..d.len());
                    d[at] = rng.u8(..);
                }
                2 => d = (0..rng.usize(1..1500)).map(|_| rng.u8(..)).collect(),
                _ => {}
            }
            let _ = sprayer.send_to(&d, sip).await;
            if i % 200 == 0 {
                tokio::task::yield_now().await;
            }
        }
    };
    let ((report, _), ()) = tokio::join!(call(&ctx, &cmd), spray);
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert!(report.rtp_received > 0);
    assert!(ctx.transport.is_up(), "receive loop still running");
    let m = ctx.transport.metrics();
    let dropped = m.dropped(DropReason::Malformed) + m.dropped(DropReason::UnknownSource);
    assert!(dropped >= 4_000, "the spray is accounted for: {dropped}");
    assert_eq!(peer.exit_code().await, 0);
}

#[tokio::test]
async fn options_keepalive_tracks_the_trunk() {
    use media_processor::sip::keepalive::{run, TrunkHealth};
    let trunk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (ctx, _stop) = context(trunk.local_addr().unwrap(), Duration::from_millis(20)).await;
    let gauge = prometheus::IntGauge::new("up", "up").unwrap();
    let health = TrunkHealth::new(gauge.clone());
    let stop = CancellationToken::new();
    tokio::spawn(run(
        ctx.transport.clone(),
        ctx.transport.local_addr().unwrap().to_string(),
        ctx.trunk,
        ctx.trunk_host.clone(),
        ctx.t1,
        Duration::from_millis(200),
        health.clone(),
        stop.clone(),
    ));
    // The trunk answers the first probes, then goes silent, then comes back.
    let answer = |n: usize| {
        let trunk = &trunk;
        async move {
            let mut buf = vec![0u8; 4096];
            for _ in 0..n {
                let (len, from) = trunk.recv_from(&mut buf).await.unwrap();
                let req = media_processor::sip::Message::parse(&buf[..len]).unwrap();
                assert_eq!(req.method(), Some("OPTIONS"));
                let resp = media_processor::sip::response_to(&req, 200, "OK", Some("t"), "", "");
                trunk.send_to(resp.as_bytes(), from).await.unwrap();
            }
        }
    };
    answer(2).await;
    assert!(health.is_up());
    let waited = Instant::now();
    while health.is_up() && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!health.is_up(), "down after two unanswered probes");
    assert_eq!(gauge.get(), 0);
    let up_again = health.clone();
    let waiter = tokio::spawn(async move { up_again.wait_up(&CancellationToken::new()).await });
    // Answer everything from now on until the waiter sees the trunk up.
    let answering = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, from)) = trunk.recv_from(&mut buf).await else {
                return;
            };
            let Ok(req) = media_processor::sip::Message::parse(&buf[..len]) else {
                continue;
            };
            let resp = media_processor::sip::response_to(&req, 200, "OK", Some("t"), "", "");
            let _ = trunk.send_to(resp.as_bytes(), from).await;
        }
    });
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
    assert!(
        matches!(woke, Ok(Ok(true))),
        "dials resume once the trunk answers"
    );
    assert_eq!(gauge.get(), 1);
    stop.cancel();
    answering.abort();
}

#[tokio::test]
async fn forged_rtp_from_another_port_is_dropped_and_counted() {
    let peer = sipp(None).await;
    let tap = Proxy::start(peer.addr(), false).await;
    let (ctx, _stop) = context(tap.addr, T1).await;
    let cmd = command(2_000, 15_000);
    let forge = async {
        let invite = loop {
            if let Some(i) = tap.sent_by_caller("INVITE ").first().cloned() {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let port: u16 = invite
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|m| m.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        // Once answered, 2,000 well-formed RTP packets from a stranger.
        while tap.sent_by_callee("SIP/2.0 200").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = format!("127.0.0.1:{port}");
        for seq in 0..2_000u16 {
            let mut pkt = vec![0x80, 0x00];
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            pkt.extend_from_slice(&0xdead_beefu32.to_be_bytes());
            pkt.extend_from_slice(&[0xff; 160]);
            stranger.send_to(&pkt, &target).await.unwrap();
            // About 2,000 a second, 40 times a real stream: the media loop
            // reads once per 20 ms tick, and a burst beyond the socket's
            // receive buffer is dropped by the kernel before it is counted.
            if seq % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let ((report, _), ()) = tokio::join!(call(&ctx, &cmd), forge);
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert!(
        report.rtp_dropped >= 1_900,
        "forged packets dropped: {report:?}"
    );
    assert!(
        report.rtp_received > 0,
        "SIPp's echo still accepted: {report:?}"
    );
    assert!(
        report.rtp_received <= report.rtp_sent,
        "nothing but the echo of what we sent was accepted: {report:?}"
    );
    let counted = ctx
        .transport
        .metrics()
        .rtp_dropped
        .with_label_values(&["source"])
        .get();
    assert!(counted >= 1_900, "{counted}");
    assert_eq!(peer.exit_code().await, 0);
}

#[tokio::test]
async fn a_call_over_tcp_to_the_trunk() {
    let peer = sipp_with(None, &["-t", "t1"]).await;
    let (ctx, _stop) = context_tcp(peer.addr(), T1).await;
    let (report, progress) = call(&ctx, &command(800, 15_000)).await;
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::AnsweredHuman, Some(200)),
        "{report:?}"
    );
    assert!(
        report.rtp_received > 0,
        "RTP still flows over UDP: {report:?}"
    );
    assert!(progress
        .iter()
        .any(|p| matches!(p, Progress::Answered { .. })));
    assert_eq!(
        peer.exit_code().await,
        0,
        "SIPp got ACK and BYE on the connection"
    );
}

#[tokio::test]
async fn large_requests_go_over_tcp_to_the_trunk_and_back_to_udp_without_it() {
    use media_processor::sip::{SipMetrics, SipTransport};
    use tokio::io::AsyncReadExt;
    // A trunk listening on UDP and TCP at the same port.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let trunk = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(trunk).await.unwrap();
    let t = SipTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![trunk],
        SipMetrics::new(),
    )
    .await
    .unwrap();
    let big = format!(
        "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKbig\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
        "p".repeat(1_400)
    );
    t.send(trunk, &big).await;
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), tcp.accept())
        .await
        .unwrap()
        .unwrap();
    let mut got = vec![0u8; big.len()];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8(got).unwrap();
    assert!(
        got.starts_with("OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP "),
        "{}",
        &got[..60]
    );
    // Small requests stay on UDP.
    t.send(trunk, "OPTIONS sip:x SIP/2.0\r\n\r\n").await;
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"OPTIONS sip:x"));
    // A trunk without TCP: after the failed connection, UDP again.
    let udp_only = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other = udp_only.local_addr().unwrap();
    let t = SipTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![other],
        SipMetrics::new(),
    )
    .await
    .unwrap();
    let mut arrived = false;
    for _ in 0..20 {
        t.send(other, &big).await;
        if let Ok(Ok((n, _))) = tokio::time::timeout(
            Duration::from_millis(300),
            udp_only.recv_from(&mut vec![0u8; 4096]),
        )
        .await
        {
            arrived = n == big.len();
            break;
        }
    }
    assert!(arrived, "the large request fell back to UDP");
}

#[tokio::test]
async fn cancel_waits_for_a_provisional_response_and_is_retransmitted_until_answered() {
    use media_processor::sip::{response_to, Message};
    let trunk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (ctx, _stop) = context(trunk.local_addr().unwrap(), Duration::from_millis(50)).await;
    let hangup = CancellationToken::new();
    let cmd = command(5_000, 15_000);
    // The far end: holds back its 180 for 400 ms, ignores the first CANCEL,
    // answers the second with 200 and 487, and takes the ACK.
    let far_end = async {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        let mut cancels = 0;
        let mut invite: Option<Message> = None;
        let started = Instant::now();
        loop {
            let Ok(Ok((n, from))) =
                tokio::time::timeout(Duration::from_secs(5), trunk.recv_from(&mut buf)).await
            else {
                break;
            };
            let m = Message::parse(&buf[..n]).unwrap();
            let method = m.method().unwrap_or("").to_owned();
            seen.push((method.clone(), started.elapsed()));
            match method.as_str() {
                "INVITE" if invite.is_none() => {
                    invite = Some(m.clone());
                    hangup.cancel();
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let ringing = response_to(&m, 180, "Ringing", Some("far"), "", "");
                    trunk.send_to(ringing.as_bytes(), from).await.unwrap();
                }
                "CANCEL" => {
                    cancels += 1;
                    if cancels == 2 {
                        let ok = response_to(&m, 200, "OK", Some("far"), "", "");
                        trunk.send_to(ok.as_bytes(), from).await.unwrap();
                        let inv = invite.as_ref().unwrap();
                        let terminated =
                            response_to(inv, 487, "Request Terminated", Some("far"), "", "");
                        trunk.send_to(terminated.as_bytes(), from).await.unwrap();
                    }
                }
                "ACK" => break,
                _ => {}
            }
        }
        seen
    };
    let ((report, _), seen) = tokio::join!(
        call_until(&ctx, &cmd, hangup.clone(), CancellationToken::new()),
        far_end
    );
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::Canceled, Some(487)),
        "{report:?}"
    );
    let first_cancel = seen
        .iter()
        .find(|(m, _)| m == "CANCEL")
        .map(|(_, t)| *t)
        .unwrap();
    assert!(
        first_cancel >= Duration::from_millis(400),
        "no CANCEL before the 180: {seen:?}"
    );
    assert!(
        seen.iter().filter(|(m, _)| m == "CANCEL").count() >= 2,
        "retransmitted: {seen:?}"
    );
    assert_eq!(
        seen.last().map(|(m, _)| m.as_str()),
        Some("ACK"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_retransmitted_reinvite_gets_the_same_answer_and_our_2xx_is_repeated_until_acked() {
    use media_processor::sip::{response_to, Message};
    let trunk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = trunk.local_addr().unwrap();
    let (ctx, _stop) = context(me, Duration::from_millis(50)).await;
    let cmd = command(2_500, 15_000);
    let far_end = async {
        let mut buf = vec![0u8; 4096];
        let (n, from) = trunk.recv_from(&mut buf).await.unwrap();
        let invite = Message::parse(&buf[..n]).unwrap();
        let sdp = format!("v=0\r\no=f 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n", me.port() + 2);
        let ok = response_to(
            &invite,
            200,
            "OK",
            Some("far"),
            &format!("Contact: <sip:far@{me}>\r\nContent-Type: application/sdp\r\n"),
            &sdp,
        );
        trunk.send_to(ok.as_bytes(), from).await.unwrap();
        // Wait for the ACK (RTP may arrive meanwhile on another port).
        loop {
            let (n, _) = trunk.recv_from(&mut buf).await.unwrap();
            if buf[..n].starts_with(b"ACK ") {
                break;
            }
        }
        let from_hdr = invite.header("from").unwrap().to_owned();
        let to_hdr = format!("{};tag=far", invite.header("to").unwrap());
        let reinvite = format!(
            "INVITE sip:dialstack@{from} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKre1\r\nFrom: {to_hdr}\r\nTo: {from_hdr}\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:far@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            invite.call_id(),
            sdp.len()
        );
        // Send it twice (a retransmission), then count our 200s before ACKing.
        trunk.send_to(reinvite.as_bytes(), from).await.unwrap();
        trunk.send_to(reinvite.as_bytes(), from).await.unwrap();
        let mut answers = Vec::new();
        while answers.len() < 4 {
            let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(2), trunk.recv_from(&mut buf)).await
            else {
                break;
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if text.starts_with("SIP/2.0 ") {
                answers.push(text);
            }
        }
        let ack = format!(
            "ACK sip:dialstack@{from} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKack1\r\nFrom: {to_hdr}\r\nTo: {from_hdr}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            invite.call_id()
        );
        trunk.send_to(ack.as_bytes(), from).await.unwrap();
        // After the ACK, no more 200s; then our BYE, answered.
        loop {
            let Ok(Ok((n, from))) =
                tokio::time::timeout(Duration::from_secs(5), trunk.recv_from(&mut buf)).await
            else {
                break;
            };
            if let Ok(m) = Message::parse(&buf[..n]) {
                if m.method() == Some("BYE") {
                    let ok = response_to(&m, 200, "OK", None, "", "");
                    trunk.send_to(ok.as_bytes(), from).await.unwrap();
                    break;
                }
                assert!(m.method().is_some(), "a 200 after the ACK");
            }
        }
        answers
    };
    let ((report, _), answers) = tokio::join!(call(&ctx, &cmd), far_end);
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert!(answers.len() >= 3, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("SIP/2.0 200 ") && *a == answers[0]),
        "one answer, repeated: {answers:?}"
    );
    assert!(answers[0].contains("a=sendrecv"), "with our SDP");
    assert_eq!(ctx.transport.metrics().dropped(DropReason::CseqOrder), 0);
}
