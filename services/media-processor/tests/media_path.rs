//! The media path of answered calls over real UDP sockets, with SIPp as the
//! callee: its built-in `uas` with `-rtp_echo` sends our RTP back unchanged.
//!
//! - a clean echoed call: quality (MOS, R, jitter, playout delay), the
//!   stream's counters and the Prometheus metrics
//! - a hostile stranger during a call: garbage and forged RTP at the RTP
//!   port, forged RTCP at the RTCP port; the call and its quality hold
//! - RTCP: our reports reach the peer's RTP port + 1, and our own reports
//!   reflected back give no bogus round-trip time
//! - hold by re-INVITE: the report counts no audio sent while held
//!
//! The test picks the ports (ours through the call context's port pool,
//! SIPp's with `-mp`) so it knows where to aim without reading SDP.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{call, command, context, scenario, sipp_with, Sipp};
use dialstack_contract::{DialCommand, Outcome, Quality};
use media_processor::call::{place_call, CallContext, Progress, Report};
use media_processor::rtp::stream::StreamReport;
use media_processor::rtp::PortPool;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const T1: Duration = Duration::from_millis(100);

/// Polls `probe` every 10 ms until it gives a value; panics naming `what`
/// when `within` passes first.
async fn eventually<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An even port `p` with `p` to `p + n - 1` free on 127.0.0.1 just now (the
/// caller binds them next; as with `common::free_udp_port`, another process
/// could take one meanwhile, which is unlikely).
fn free_port_run(n: u16) -> u16 {
    for _ in 0..100 {
        let p = common::free_udp_port() & !1;
        if p < 1024 || p > u16::MAX - n {
            continue;
        }
        let held: Vec<std::net::UdpSocket> = (p..p + n)
            .map_while(|q| std::net::UdpSocket::bind(("127.0.0.1", q)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return p;
        }
    }
    panic!("no run of {n} free UDP ports on 127.0.0.1");
}

/// Pins the call's RTP port (and RTCP, the next one) so the test knows
/// where to aim; a port taken meanwhile fails the call with `no_rtp_port`.
fn pin_rtp_port(ctx: &mut CallContext) -> u16 {
    let p = free_port_run(2);
    ctx.ports = Arc::new(PortPool::parse(&format!("{p}-{}", p + 1)).unwrap());
    p
}

/// SIPp's built-in `uas` echoing RTP at `media_port` (and `media_port + 2`),
/// without the scenario's closing 4 s `timewait` (kept for a lost 200 to our
/// BYE, which loopback does not lose): it exits once it has answered our BYE.
async fn echo_peer(media_port: u16) -> Sipp {
    static SCENARIO: OnceLock<PathBuf> = OnceLock::new();
    let path = SCENARIO.get_or_init(|| {
        let dump = std::process::Command::new("sipp")
            .args(["-sd", "uas"])
            .output()
            .expect("sipp installed (scripts/test-env.sh installs sip-tester)");
        let xml = String::from_utf8(dump.stdout).unwrap();
        let timewait = r#"<timewait milliseconds="4000"/>"#;
        assert!(
            xml.contains(timewait),
            "SIPp's uas scenario as known: {xml}"
        );
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-logs/sipp_peer");
        std::fs::create_dir_all(&dir).unwrap();
        // Written aside and renamed, so a concurrent run never reads half a file.
        let path = dir.join("uas_echo_no_timewait.xml");
        let part = dir.join(format!("uas_echo_no_timewait.xml.{}", std::process::id()));
        std::fs::write(&part, xml.replace(timewait, "")).unwrap();
        std::fs::rename(&part, &path).unwrap();
        path
    });
    // A later -mp overrides the one `sipp_with` picks.
    let mp = media_port.to_string();
    sipp_with(Some(path.clone()), &["-rtp_echo", "-mp", &mp]).await
}

/// Places `cmd` and runs `during` from the moment it is answered (our
/// `Progress::Answered`) alongside the rest of the call.
async fn call_and<T>(
    ctx: &CallContext,
    cmd: &DialCommand,
    during: impl Future<Output = T>,
) -> (Report, T) {
    let (tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let place = async {
        tokio::time::timeout(
            Duration::from_secs(40),
            place_call(
                ctx,
                cmd,
                tx,
                CancellationToken::new(),
                CancellationToken::new(),
            ),
        )
        .await
        .expect("the call ends")
    };
    let side = async {
        loop {
            match progress.recv().await {
                Some(Progress::Answered { .. }) => break,
                Some(_) => {}
                None => panic!("the call ended unanswered"),
            }
        }
        during.await
    };
    tokio::join!(place, side)
}

fn media(report: &Report) -> &StreamReport {
    report
        .media
        .as_ref()
        .unwrap_or_else(|| panic!("an answered call has a stream report: {report:?}"))
}

fn quality(report: &Report) -> &Quality {
    report
        .quality()
        .unwrap_or_else(|| panic!("audio arrived, so quality is known: {report:?}"))
}

fn rtcp_count(ctx: &CallContext, direction: &str, result: &str) -> u64 {
    ctx.media
        .metrics
        .rtcp
        .with_label_values(&[direction, result])
        .get()
}

/// Everything echoed came back (the last few may be in flight when the
/// stream stops) and nothing else was accepted.
fn assert_echoed(m: &StreamReport) {
    assert!(
        m.received <= m.sent && m.sent - m.received <= 5,
        "the echo of what we sent, all of it: {m:?}"
    );
}

#[tokio::test]
async fn an_echoed_call_has_clean_quality_and_moves_the_metrics() {
    let peer = echo_peer(free_port_run(3)).await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    let (report, _) = call(&ctx, &command(2_000, 15_000)).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    let m = media(&report);
    let q = quality(&report);
    eprintln!(
        "echoed call: {q:?} delay p50/p95 {}/{} ms",
        m.delay_p50_ms, m.delay_p95_ms
    );

    // One frame every 20 ms of talk: the baseline the hold test compares to.
    let frames = report.talk_ms as u64 / 20;
    assert!(
        m.sent + 10 >= frames && m.sent <= frames + 2,
        "{} sent in {} ms",
        m.sent,
        report.talk_ms
    );
    assert_echoed(m);
    assert_eq!(
        (m.malformed, m.wrong_source, m.wrong_ssrc),
        (0, 0, 0),
        "{m:?}"
    );
    assert_eq!(
        (report.rtp_sent, report.rtp_received, report.rtp_dropped),
        (m.sent, m.received, 0)
    );

    assert!(q.packets_received > 60, "{q:?}");
    assert_eq!(
        q.packets_received, m.received,
        "every accepted packet was audio"
    );
    assert_eq!(
        (q.packets_lost, q.packets_late, q.packets_duplicated),
        (0, 0, 0),
        "{q:?}"
    );
    assert!((4.0..=4.5).contains(&q.mos), "{q:?}");
    assert!(q.r_factor > 85.0, "{q:?}");
    assert!(
        (20.0..=80.0).contains(&q.jitter_buffer_ms),
        "the fixed 50 ms buffer: {q:?}"
    );
    assert!(
        q.jitter_ms_mean < 10.0 && q.jitter_ms_max >= q.jitter_ms_mean,
        "{q:?}"
    );
    // Nothing concealed but, at most, the tail: an echo still in flight
    // when the call stops is neither lost nor late, only missing.
    assert!(q.concealed_ms <= 60, "{q:?}");
    assert_eq!(
        q.rtt_ms, None,
        "no RTCP in a 2 s call (first report at 5 s)"
    );
    assert!((20..=80).contains(&m.delay_p50_ms), "{m:?}");

    let mm = &ctx.media.metrics;
    assert_eq!(mm.received.get(), q.packets_received);
    assert_eq!((mm.lost.get(), mm.late.get()), (0, 0));
    assert_eq!(mm.mos.get_sample_count(), 1, "one call, one MOS");
    assert!((mm.mos.get_sample_sum() - q.mos).abs() < 1e-9);
    assert_eq!(mm.jitter.get_sample_count(), 1);
    assert_eq!(rtcp_count(&ctx, "sent", "ok"), 0);
    assert_eq!(peer.exit_code().await, 0, "SIPp got ACK and our BYE");
}

/// A seeded datagram of random bytes, 0 to 1,499 long.
fn garbage(rng: &mut fastrand::Rng) -> Vec<u8> {
    let len = rng.usize(..1_500);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A well-formed PCMU packet of a stream that is not the call's.
fn foreign_rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xff; 160]);
    p
}

/// Forged RTCP: an SR, an RR whose block claims a 2 s old report (a skewed
/// round trip, were it believed), or garbage, in turn.
fn forged_rtcp(i: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    match i % 3 {
        0 => {
            let mut p = vec![0x80, 200, 0, 6];
            p.extend_from_slice(&rng.u32(..).to_be_bytes());
            p.extend_from_slice(&rng.u64(..).to_be_bytes());
            p.extend_from_slice(&[0; 12]);
            p
        }
        1 => {
            let mut p = vec![0x81, 201, 0, 7];
            p.extend_from_slice(&rng.u32(..).to_be_bytes());
            p.extend_from_slice(&rng.u32(..).to_be_bytes());
            p.extend_from_slice(&[0; 12]);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            let mid32 = ((now.as_secs() + 2_208_988_800 - 2) << 16) as u32;
            p.extend_from_slice(&mid32.to_be_bytes());
            p.extend_from_slice(&[0; 4]);
            p
        }
        _ => garbage(rng),
    }
}

const GARBAGE: usize = 500;
const FOREIGN_RTP: u16 = 200;
const FORGED_RTCP: usize = 200;

/// Sends `datagrams` to `to` at a bounded rate: 8 every 5 ms, at most
/// 64 KB queued per 20 ms tick however the media loop reads its socket, so
/// the socket buffer (208 KB by default) never overflows and every datagram
/// is judged. A flood beyond that is lost in the kernel, not counted.
async fn spray(from: &UdpSocket, to: SocketAddr, datagrams: &[Vec<u8>]) {
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for burst in datagrams.chunks(8) {
        pace.tick().await;
        for d in burst {
            from.send_to(d, to).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_hostile_stranger_neither_disturbs_the_call_nor_its_quality() {
    let peer = echo_peer(free_port_run(3)).await;
    let (mut ctx, _stop) = context(peer.addr(), T1).await;
    let rtp_port = pin_rtp_port(&mut ctx);
    let cmd = command(3_000, 15_000);
    let started = Instant::now();
    let attack = async {
        let rtp: SocketAddr = ([127, 0, 0, 1], rtp_port).into();
        let rtcp: SocketAddr = ([127, 0, 0, 1], rtp_port + 1).into();
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let junk: Vec<Vec<u8>> = (0..GARBAGE).map(|_| garbage(&mut rng)).collect();
        // The gate parses before it looks at the source: garbage that parses
        // as an RTP header is from the wrong source, the rest is malformed.
        let parses = junk
            .iter()
            .filter(|d| media_processor::rtp::parse_rtp_header(d).is_some())
            .count() as u64;
        let ssrc = rng.u32(..);
        let rtp_forged: Vec<Vec<u8>> = (0..FOREIGN_RTP).map(|s| foreign_rtp(s, ssrc)).collect();
        let rtcp_forged: Vec<Vec<u8>> =
            (0..FORGED_RTCP).map(|i| forged_rtcp(i, &mut rng)).collect();

        // Same host as the peer, another port: the wrong RTP source.
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        spray(&stranger, rtp, &junk).await;
        spray(&stranger, rtp, &rtp_forged).await;
        // RTCP is accepted by the peer's IP address (stream.rs), so the
        // forger sits on another address of the loopback network.
        let other_host = UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("127.0.0.2 is a loopback address on Linux");
        spray(&other_host, rtcp, &rtcp_forged).await;
        eventually(
            Duration::from_secs(2),
            "the forged RTCP counted as foreign",
            || (rtcp_count(&ctx, "received", "foreign") >= FORGED_RTCP as u64).then_some(()),
        )
        .await;
        (parses, started.elapsed())
    };
    let (report, (parses, attack_took)) = call_and(&ctx, &cmd, attack).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert!(
        report.talk_ms >= 3_000 && attack_took < Duration::from_millis(2_500),
        "the call ran its talk time, the attack fell within it ({attack_took:?}): {report:?}"
    );
    assert_eq!(peer.exit_code().await, 0, "SIPp got our BYE");

    let m = media(&report);
    eprintln!("under attack: {m:?}, {parses} of the garbage parse as RTP");
    assert_eq!(
        (m.wrong_source, m.malformed, m.wrong_ssrc),
        (u64::from(FOREIGN_RTP) + parses, GARBAGE as u64 - parses, 0),
        "every stranger's datagram refused and counted once"
    );
    assert_eq!(report.rtp_dropped, GARBAGE as u64 + u64::from(FOREIGN_RTP));
    let dropped = |reason| {
        ctx.transport
            .metrics()
            .rtp_dropped
            .with_label_values(&[reason])
            .get()
    };
    assert_eq!(
        (dropped("source"), dropped("malformed")),
        (m.wrong_source, m.malformed)
    );
    assert_echoed(m);

    let q = quality(&report);
    assert_eq!(
        q.packets_received, m.received,
        "no stranger's packet in the jitter buffer"
    );
    assert_eq!((q.packets_lost, q.packets_late), (0, 0), "{q:?}");
    assert!(q.mos > 4.0, "{q:?}");
    assert_eq!(q.rtt_ms, None, "no forged report set a round trip");

    assert_eq!(rtcp_count(&ctx, "received", "foreign"), FORGED_RTCP as u64);
    assert_eq!(
        (
            rtcp_count(&ctx, "received", "ok"),
            rtcp_count(&ctx, "received", "malformed")
        ),
        (0, 0),
        "the forger's reports never reached the parser"
    );
}

/// One of our RTCP compound packets, as far as the test checks it.
#[derive(Debug)]
struct OurReport {
    ssrc: u32,
    ntp: u64,
    packet_count: u32,
    /// (SSRC, cumulative lost, LSR) of the report block, if any.
    block: Option<(u32, u32, u32)>,
    cname: String,
}

fn read_our_report(d: &[u8]) -> OurReport {
    let be32 = |at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
    assert!(d.len() >= 28 && d[0] >> 6 == 2, "RTCP version 2: {d:?}");
    assert_eq!(d[1], 200, "we sent RTP, so the report is an SR: {d:?}");
    let blocks = d[0] & 0x1f;
    assert!(blocks <= 1, "{d:?}");
    let sr_len = (usize::from(u16::from_be_bytes([d[2], d[3]])) + 1) * 4;
    let block = (blocks == 1).then(|| (be32(28), be32(32) & 0x00ff_ffff, be32(44)));
    // SDES follows: one chunk, CNAME item first.
    let sdes = &d[sr_len..];
    assert_eq!(sdes[1], 202, "an SDES follows the SR: {d:?}");
    assert_eq!(sdes[8], 1, "a CNAME item: {d:?}");
    let cname_len = usize::from(sdes[9]);
    OurReport {
        ssrc: be32(4),
        ntp: u64::from_be_bytes(d[8..16].try_into().unwrap()),
        packet_count: be32(20),
        block,
        cname: String::from_utf8_lossy(&sdes[10..10 + cname_len]).into_owned(),
    }
}

#[tokio::test]
async fn our_rtcp_reaches_the_peer_and_its_reflection_gives_no_bogus_round_trip() {
    let sipp_media = free_port_run(3);
    let peer = echo_peer(sipp_media).await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    // SIPp 3.6 echoes RTP on -mp and -mp + 2 and leaves -mp + 1, where our
    // RTCP goes, unbound: its echo never returns our reports. Stand in for
    // a peer that does, and keep what we sent.
    let rtcp = UdpSocket::bind(("127.0.0.1", sipp_media + 1))
        .await
        .expect("SIPp does not listen on its media port + 1");
    // Two reports: at 5 s and 10 s of media.
    let cmd = command(10_500, 15_000);
    let done = CancellationToken::new();
    let reflect = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1_500];
        loop {
            tokio::select! {
                r = rtcp.recv_from(&mut buf) => {
                    let (n, from) = r.unwrap();
                    seen.push(buf[..n].to_vec());
                    rtcp.send_to(&buf[..n], from).await.unwrap();
                }
                _ = done.cancelled() => break,
            }
        }
        seen
    };
    let run = async {
        let r = call(&ctx, &cmd).await;
        done.cancel();
        r
    };
    let ((report, _), seen) = tokio::join!(run, reflect);
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert_eq!(peer.exit_code().await, 0);

    let reports: Vec<OurReport> = seen.iter().map(|d| read_our_report(d)).collect();
    eprintln!("our reports: {reports:?}");
    assert_eq!(
        reports.len(),
        2,
        "one report every 5 s of media: {reports:?}"
    );
    let ssrc = reports[0].ssrc;
    for r in &reports {
        assert_eq!(r.ssrc, ssrc);
        assert_eq!(r.cname, format!("dialstack-{ssrc:08x}"));
    }
    let sent_at_5s = reports[0].packet_count;
    assert!(
        (200..=260).contains(&sent_at_5s) && (450..=510).contains(&reports[1].packet_count),
        "packet counts of the SRs: {reports:?}"
    );
    // SIPp echoes our packets unchanged, so the stream we report on is ours.
    assert_eq!(
        reports[0].block,
        Some((ssrc, 0, 0)),
        "no SR heard before the first"
    );
    let lsr = (reports[0].ntp >> 16) as u32;
    assert_eq!(
        reports[1].block,
        Some((ssrc, 0, lsr)),
        "the second names the first (our own, reflected) as the last SR heard"
    );

    assert_eq!(rtcp_count(&ctx, "sent", "ok"), 2);
    assert_eq!(
        (
            rtcp_count(&ctx, "received", "ok"),
            rtcp_count(&ctx, "received", "malformed"),
            rtcp_count(&ctx, "received", "foreign")
        ),
        (2, 0, 0),
        "both reflections read as reports from the peer"
    );
    let q = quality(&report);
    eprintln!("with our reports reflected: {q:?}");
    // The reflected block measures the real loop (two loopback transits),
    // or nothing when rounding to 1/65536 s makes it negative.
    assert!(
        q.rtt_ms.is_none_or(|rtt| (0.0..50.0).contains(&rtt)),
        "a plausible loopback round trip: {q:?}"
    );
    assert_eq!((q.packets_lost, q.packets_late), (0, 0), "{q:?}");
    assert!(q.mos > 4.0, "{q:?}");
    assert_echoed(media(&report));
}

#[tokio::test]
async fn no_audio_is_sent_while_held() {
    // The callee's media port is ours to watch (the scenario's [rtpport]).
    let watch = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = watch.local_addr().unwrap().port().to_string();
    let peer = sipp_with(
        Some(scenario("uas_reinvite_hold.xml")),
        &["-key", "rtpport", &port],
    )
    .await;
    let (ctx, _stop) = context(peer.addr(), T1).await;
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let done = CancellationToken::new();
    let counter = {
        let (watch, arrivals, done) = (watch.clone(), arrivals.clone(), done.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2_048];
            loop {
                tokio::select! {
                    biased;
                    r = watch.recv_from(&mut buf) => {
                        if r.is_ok() {
                            arrivals.lock().unwrap().push(Instant::now());
                        }
                    }
                    _ = done.cancelled() => break,
                }
            }
            while watch.try_recv_from(&mut buf).is_ok() {
                arrivals.lock().unwrap().push(Instant::now());
            }
        })
    };
    let (report, _) = call(&ctx, &command(15_000, 15_000)).await;
    done.cancel();
    counter.await.unwrap();
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert_eq!(
        peer.exit_code().await,
        0,
        "SIPp held, resumed and hung up, every answer as expected"
    );

    let m = media(&report);
    let at = arrivals.lock().unwrap().clone();
    let held = at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "held call: {m:?}, talk {} ms, longest silence {held:?}",
        report.talk_ms
    );
    assert_eq!(
        m.sent,
        at.len() as u64,
        "what the report counts is what arrived"
    );
    // Without the hold the talk time would have carried talk_ms / 20 frames
    // (the echoed-call test checks that rate); the scenario holds for 1.2 s.
    let frames = report.talk_ms as u64 / 20;
    assert!(
        m.sent + 45 <= frames && m.sent >= 60,
        "{} sent in {} ms of talk, held {held:?}",
        m.sent,
        report.talk_ms
    );
    assert!(held >= Duration::from_millis(900), "{held:?}");
    assert_eq!(report.quality(), None, "the held callee sent no audio");
    assert_eq!(
        (m.received, m.malformed, m.wrong_source),
        (0, 0, 0),
        "{m:?}"
    );
}

/// A stream whose process stalls keeps to the wall clock: a stall of up to
/// `MAX_CATCH_UP` is made up by sending the missed frames at once
/// (consecutive timestamps); a longer one is skipped, the timestamp jumping
/// over the gap and the next packet marked as a new talkspurt. Sent plus skipped frames cover the stream's whole life, so a
/// recording lasts as long as the call.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_stream_catches_up_and_then_skips_keeping_to_the_clock() {
    use media_processor::rtp::stream::{run_stream, MediaContext, MAX_CATCH_UP};
    use media_processor::sip::sdp::{Direction, RemoteMedia};
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ours = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(RemoteMedia {
        addr: peer.local_addr().unwrap(),
        payload_type: 0,
        dtmf_payload_type: None,
        direction: Direction::SendRecv,
    });
    let stop = CancellationToken::new();
    let started = Instant::now();
    let stream = tokio::spawn(run_stream(
        ours,
        None,
        rx,
        MediaContext::standalone(Default::default(), false),
        None,
        stop.clone(),
        None,
    ));
    // Packets as they come: (sequence, timestamp, marker).
    let mut got: Vec<(u16, u32, bool)> = Vec::new();
    let mut buf = [0u8; 1500];
    let collect = |buf: &[u8], got: &mut Vec<(u16, u32, bool)>| {
        got.push((
            u16::from_be_bytes([buf[2], buf[3]]),
            u32::from_be_bytes(buf[4..8].try_into().unwrap()),
            buf[1] & 0x80 != 0,
        ));
    };
    let mut stalls = vec![Duration::from_millis(80), Duration::from_millis(600)];
    stalls.reverse();
    let mut next_stall = Instant::now() + Duration::from_millis(300);
    let until = Instant::now() + Duration::from_millis(1_800);
    while Instant::now() < until {
        if Instant::now() >= next_stall {
            if let Some(d) = stalls.pop() {
                // The runtime's only thread is blocked: nothing ticks.
                std::thread::sleep(d);
                next_stall = Instant::now() + Duration::from_millis(300);
            }
        }
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(5), peer.recv(&mut buf)).await
        {
            assert!(n >= 12);
            collect(&buf[..n], &mut got);
        }
    }
    stop.cancel();
    let report = stream.await.unwrap();
    let lived = started.elapsed();
    while let Ok(n) = peer.try_recv(&mut buf) {
        collect(&buf[..n], &mut got);
    }
    assert!(stalls.is_empty(), "both stalls happened");
    assert_eq!(
        got.len() as u64,
        report.sent,
        "every packet sent arrived on loopback"
    );
    // The short stall is made up; the long one, past the catch-up bound,
    // is skipped. (A machine so busy that the test's thread stalls on its
    // own past the bound adds skips of its own: the checks allow for them.)
    const { assert!(MAX_CATCH_UP.as_millis() > 80 && MAX_CATCH_UP.as_millis() < 600) };
    // Sent plus skipped frames span the stream's life (20 ms each).
    let frames = report.sent + report.frames_skipped;
    let expected = lived.as_millis() as u64 / 20;
    assert!(
        frames + 3 >= expected && frames <= expected + 1,
        "{frames} frames over {lived:?} ({} sent, {} skipped)",
        report.sent,
        report.frames_skipped
    );
    // Sequence numbers never jump (nothing was lost on the way); the
    // timestamp moves 160 a packet, except over skipped frames: a jump of
    // whole frames, its packet marked. The jumps add up to the frames
    // skipped, and one of them is the long stall's (its whole frames, less
    // one of scheduling slack).
    let mut jumped: Vec<u64> = Vec::new();
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1), "sequence is continuous");
        let step = w[1].1.wrapping_sub(w[0].1);
        if step != 160 {
            assert!(
                step % 160 == 0 && step > 160 && w[1].2,
                "a marked jump of whole frames, not {step} (marker {})",
                w[1].2
            );
            jumped.push(u64::from(step / 160 - 1));
        }
    }
    assert_eq!(
        jumped.iter().sum::<u64>(),
        report.frames_skipped,
        "jumps {jumped:?}"
    );
    assert!(
        jumped.iter().any(|n| (27..=40).contains(n)),
        "the 600 ms stall is skipped, about 30 frames: jumps {jumped:?}"
    );
}
