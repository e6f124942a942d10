//! The call state machine against a real SIP peer (SIPp): answered with RTP
//! echoed back, busy, ring-out ended by CANCEL, a malformed response, and a
//! trunk that never answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_contract::{DialCommand, FailReason, Outcome};
use media_processor::call::{place_call, CallContext, Progress, Report};
use media_processor::rtp::PortPool;
use media_processor::sip::{SipMetrics, SipTransport};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(name)
}

struct Sipp {
    child: Child,
    port: u16,
}

/// SIPp as a UAS for one call: `None` runs the built-in `uas` with RTP echo.
async fn sipp(scenario_file: Option<PathBuf>) -> Sipp {
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-logs/sipp_peer");
    std::fs::create_dir_all(&logs).unwrap();
    let port = free_udp_port();
    let mut cmd = Command::new("sipp");
    match scenario_file {
        Some(f) => cmd.arg("-sf").arg(f),
        None => cmd.args(["-sn", "uas", "-rtp_echo"]),
    };
    cmd.args([
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-mp",
        &(free_udp_port() & !1).to_string(),
    ])
    .args(["-m", "1", "-nostdin", "-trace_err", "-error_file"])
    .arg(logs.join(format!("sipp-{port}-errors.log")))
    .current_dir(&logs)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("sipp installed (scripts/test-env.sh installs sip-tester)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    Sipp { child, port }
}

impl Sipp {
    async fn exit_code(mut self) -> i32 {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("sipp ends its call")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

async fn context(trunk: SocketAddr, t1: Duration) -> (CallContext, CancellationToken) {
    let stop = CancellationToken::new();
    let transport = SipTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![trunk],
        SipMetrics::new(),
    )
    .await
    .unwrap();
    tokio::spawn(transport.clone().run(stop.clone()));
    let ctx = CallContext {
        transport,
        trunk,
        trunk_host: trunk.to_string(),
        media_ip: "127.0.0.1".parse().unwrap(),
        ports: Arc::new(PortPool::parse("0").unwrap()),
        t1,
        setup_seconds: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
            "setup", "setup",
        ))
        .unwrap(),
        credentials: None,
        rtp_latch: false,
        drain_talk: Duration::from_secs(1),
    };
    (ctx, stop)
}

fn command(talk_time_ms: u64, ring_timeout_ms: u64) -> DialCommand {
    DialCommand {
        attempt_id: "a1".into(),
        call_id: uuid::Uuid::now_v7().to_string(),
        campaign_id: "k1".into(),
        phone: "+14155550101".into(),
        caller_id: "+14155550100".into(),
        talk_time_ms,
        ring_timeout_ms,
        team: None,
    }
}

async fn call(ctx: &CallContext, cmd: &DialCommand) -> (Report, Vec<Progress>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        place_call(
            ctx,
            cmd,
            tx,
            CancellationToken::new(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the call ends");
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    (report, progress)
}

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
