//! The call state machine against a real SIP peer (SIPp): answered with RTP
//! echoed back, busy, ring-out ended by CANCEL, a malformed response, and a
//! trunk that never answers.

mod common;

use std::time::{Duration, Instant};

use common::{call, command, context, scenario, sipp};
use dialstack_contract::{FailReason, Outcome};
use media_processor::call::Progress;

#[tokio::test]
async fn answered_call_exchanges_rtp_and_hangs_up() {
    let peer = sipp(None).await;
    let (ctx, _stop) = context(
        format!("127.0.0.1:{}", peer.port).parse().unwrap(),
        Duration::from_millis(500),
    )
    .await;
    let (report, progress) = call(&ctx, &command(600, 15_000)).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman);
    assert_eq!(report.sip_status, Some(200));
    assert!(report.talk_ms >= 600, "{report:?}");
    assert!(report.rtp_sent >= 20, "a packet every 20 ms: {report:?}");
    assert!(report.rtp_received > 0, "SIPp echoed our RTP: {report:?}");
    assert_eq!(progress.first(), Some(&Progress::Dialing));
    assert!(
        progress
            .iter()
            .any(|p| matches!(p, Progress::Answered { .. })),
        "{progress:?}"
    );
    assert_eq!(peer.exit_code().await, 0, "SIPp saw ACK and our BYE");
}

#[tokio::test]
async fn busy_callee() {
    let peer = sipp(Some(scenario("uas_busy.xml"))).await;
    let (ctx, _stop) = context(
        format!("127.0.0.1:{}", peer.port).parse().unwrap(),
        Duration::from_millis(500),
    )
    .await;
    let (report, progress) = call(&ctx, &command(600, 15_000)).await;
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::Busy, Some(486))
    );
    assert_eq!(progress, vec![Progress::Dialing]);
    assert_eq!(peer.exit_code().await, 0, "SIPp got the ACK of the 486");
}

#[tokio::test]
async fn ring_timeout_cancels_the_call() {
    let peer = sipp(Some(scenario("ring_then_487_on_cancel.xml"))).await;
    let (ctx, _stop) = context(
        format!("127.0.0.1:{}", peer.port).parse().unwrap(),
        Duration::from_millis(500),
    )
    .await;
    let started = Instant::now();
    let (report, progress) = call(&ctx, &command(600, 1_500)).await;
    assert_eq!(
        (report.outcome, report.sip_status),
        (Outcome::NoAnswer, Some(487))
    );
    assert!(started.elapsed() >= Duration::from_millis(1_500));
    assert_eq!(progress, vec![Progress::Dialing, Progress::Ringing]);
    assert_eq!(
        peer.exit_code().await,
        0,
        "SIPp got CANCEL and the ACK of the 487"
    );
}

#[tokio::test]
async fn malformed_response_fails_the_call_at_once() {
    let peer = sipp(Some(scenario("malformed_final.xml"))).await;
    let (ctx, _stop) = context(
        format!("127.0.0.1:{}", peer.port).parse().unwrap(),
        Duration::from_millis(500),
    )
    .await;
    let started = Instant::now();
    let (report, _) = call(&ctx, &command(600, 15_000)).await;
    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(report.reason, Some(FailReason::MalformedResponse));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no waiting for timer B"
    );
    assert_eq!(peer.exit_code().await, 0, "SIPp got our CANCEL");
}

#[tokio::test]
async fn silent_trunk_times_out_after_timer_b() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (ctx, _stop) = context(silent.local_addr().unwrap(), Duration::from_millis(20)).await;
    let started = Instant::now();
    let (report, _) = call(&ctx, &command(600, 15_000)).await;
    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(report.reason, Some(FailReason::Timeout));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(64 * 20) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    // INVITE was retransmitted (Timer A) before giving up.
    let mut buf = vec![0u8; 4096];
    let mut invites = 0;
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(50), silent.recv(&mut buf)).await
    {
        if buf[..n].starts_with(b"INVITE ") {
            invites += 1;
        }
    }
    assert!(invites >= 4, "retransmissions seen: {invites}");
}
