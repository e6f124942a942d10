//! Bridging answered calls to agents over real UDP: the callee and the
//! agents are small SIP user agents of this test, each answering with SDP
//! and sending a steady sample value of its own as PCMU, and decoding what
//! it receives; so the test sees the callee's voice arrive at the agent and
//! the agent's at the callee, through both legs' jitter buffers.
//!
//! The agent directory is an in-memory desk here (user-service's real
//! reservation is tested in the tests package, end to end).
//!
//! - bridged: audio both ways, `Bridged` progress, agent on_call then
//!   wrap_up, the agent's INVITE asks for auto-answer, either side's
//!   hang-up ends the other
//! - an agent that does not answer is canceled and released, the next one
//!   is bridged
//! - no agent within the abandon time: the callee hears the compliance
//!   message and is hung up, outcome `abandoned`; the campaign's own
//!   message (a stored prompt, or text rendered by espeak-ng with the
//!   lead's fields) when it has one, the deployment's when that prompt is
//!   missing
//! - preview: the agent is called first, then the customer
//! - blind transfer: the agent's REFER moves the callee to the target
//!   (NOTIFY 100 then 200, the agent hung up and in wrap-up, audio between
//!   callee and target); a busy target leaves the agent on the call; a
//!   target host that is not allowed and a callee's REFER are refused

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{command, context};
use dialstack_contract::ivr::Say;
use dialstack_contract::{BridgeSpec, Outcome};
use media_processor::call::bridge::{
    AgentDesk, BridgeContext, BridgeMetrics, Reservation, ReservedAgent,
};
use media_processor::call::{place_call, CallContext, Progress, Report};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const T1: Duration = Duration::from_millis(100);

/// How a test user agent behaves.
#[derive(Clone, Default)]
struct Behaviour {
    /// Answer at all (otherwise: 180 and wait for CANCEL).
    answer: bool,
    /// The sample value it sends.
    level: i16,
    /// Hang up (BYE) this long after the ACK.
    bye_after: Option<Duration>,
    /// Send REFER to this URI this long after the ACK (a blind transfer).
    refer: Option<(Duration, String)>,
    /// Answer 486 Busy Here instead of ringing.
    busy: bool,
}

/// What a test user agent saw.
#[derive(Default)]
struct Seen {
    invites: Vec<String>,
    /// Decoded samples received, per packet: the packet's mean.
    means: Vec<i32>,
    got_bye: bool,
    got_cancel: bool,
    /// Status codes of the responses to our REFER.
    refer_answers: Vec<u16>,
    /// NOTIFYs received: (Subscription-State, body).
    notifies: Vec<(String, String)>,
}

struct Ua {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn ulaw_decode(b: u8) -> i16 {
    dialstack_media::g711::ulaw_to_linear(b)
}

fn ulaw_encode(s: i16) -> u8 {
    dialstack_media::g711::linear_to_ulaw(s)
}

impl Ua {
    async fn start(b: Behaviour) -> Ua {
        let sip = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sip.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let ua = Ua {
            addr,
            seen: seen.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut media: Option<tokio::task::JoinHandle<()>> = None;
            let media_stop = CancellationToken::new();
            let mut invite: Option<(String, SocketAddr)> = None;
            let mut remote_rtp: Option<SocketAddr> = None;
            let rtp_port = rtp.local_addr().unwrap().port();
            loop {
                let (n, from) = tokio::select! {
                    r = sip.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => break },
                    _ = stop.cancelled() => break,
                };
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let method = msg.split_whitespace().next().unwrap_or("").to_owned();
                let reply = |code: &str, extra: &str, body: &str| {
                    let mut r = format!("SIP/2.0 {code}\r\n");
                    for h in ["Via", "From", "Call-ID", "CSeq"] {
                        if let Some(v) = header(&msg, h) {
                            r.push_str(&format!("{h}: {v}\r\n"));
                        }
                    }
                    let to = header(&msg, "To").unwrap_or("");
                    if to.contains("tag=") {
                        r.push_str(&format!("To: {to}\r\n"));
                    } else {
                        r.push_str(&format!("To: {to};tag=ua{rtp_port}\r\n"));
                    }
                    r.push_str(extra);
                    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
                    r
                };
                match method.as_str() {
                    "INVITE" => {
                        seen.lock().unwrap().invites.push(msg.clone());
                        if let Some((ip, port)) = sdp_media(&msg) {
                            remote_rtp = Some(SocketAddr::new(ip.parse().unwrap(), port));
                        }
                        invite = Some((msg.clone(), from));
                        if b.busy {
                            let _ = sip
                                .send_to(reply("486 Busy Here", "", "").as_bytes(), from)
                                .await;
                            continue;
                        }
                        let _ = sip
                            .send_to(reply("180 Ringing", "", "").as_bytes(), from)
                            .await;
                        if b.answer {
                            let sdp = format!(
                                "v=0\r\no=ua 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                            );
                            let extra = format!(
                                "Contact: <sip:ua@{addr}>\r\nContent-Type: application/sdp\r\n"
                            );
                            let _ = sip
                                .send_to(reply("200 OK", &extra, &sdp).as_bytes(), from)
                                .await;
                        }
                    }
                    "ACK" if media.is_none() && b.answer => {
                        let Some(to) = remote_rtp else { continue };
                        media = Some(tokio::spawn(run_media(
                            rtp.clone(),
                            to,
                            b.level,
                            seen.clone(),
                            media_stop.clone(),
                        )));
                        if let (Some(after), Some((inv, peer))) = (b.bye_after, invite.clone()) {
                            let sip = sip.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(after).await;
                                let bye = bye_for(&inv, addr, rtp_port);
                                let _ = sip.send_to(bye.as_bytes(), peer).await;
                            });
                        }
                        if let (Some((after, target)), Some((inv, peer))) =
                            (b.refer.clone(), invite.clone())
                        {
                            let sip = sip.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(after).await;
                                let refer = refer_for(&inv, addr, rtp_port, &target);
                                let _ = sip.send_to(refer.as_bytes(), peer).await;
                            });
                        }
                    }
                    "NOTIFY" => {
                        let state = header(&msg, "Subscription-State").unwrap_or("").to_owned();
                        let body = msg.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned();
                        seen.lock().unwrap().notifies.push((state, body));
                        let _ = sip.send_to(reply("200 OK", "", "").as_bytes(), from).await;
                    }
                    "SIP/2.0" if header(&msg, "CSeq").is_some_and(|c| c.ends_with("REFER")) => {
                        let code = msg
                            .split_whitespace()
                            .nth(1)
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0);
                        seen.lock().unwrap().refer_answers.push(code);
                    }
                    "BYE" => {
                        seen.lock().unwrap().got_bye = true;
                        let _ = sip.send_to(reply("200 OK", "", "").as_bytes(), from).await;
                        media_stop.cancel();
                    }
                    "CANCEL" => {
                        seen.lock().unwrap().got_cancel = true;
                        let _ = sip.send_to(reply("200 OK", "", "").as_bytes(), from).await;
                        if let Some((inv, _)) = &invite {
                            let inv = inv.clone();
                            let r = {
                                let mut r = "SIP/2.0 487 Request Terminated\r\n".to_owned();
                                for h in ["Via", "From", "Call-ID", "CSeq"] {
                                    if let Some(v) = header(&inv, h) {
                                        r.push_str(&format!("{h}: {v}\r\n"));
                                    }
                                }
                                r.push_str(&format!(
                                    "To: {};tag=ua{rtp_port}\r\nContent-Length: 0\r\n\r\n",
                                    header(&inv, "To").unwrap_or("")
                                ));
                                r
                            };
                            let _ = sip.send_to(r.as_bytes(), from).await;
                        }
                    }
                    _ => {}
                }
            }
            media_stop.cancel();
        });
        ua
    }

    fn uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.addr)
    }

    /// Share of received packets whose mean is within 15 % of `level`.
    fn heard_share(&self, level: i16) -> (f64, usize) {
        let s = self.seen.lock().unwrap();
        let n = s.means.len();
        if n == 0 {
            return (0.0, 0);
        }
        let tol = (i32::from(level).abs() * 15 / 100).max(50);
        let hits = s
            .means
            .iter()
            .filter(|&&m| (m - i32::from(level)).abs() <= tol)
            .count();
        (hits as f64 / n as f64, n)
    }

    /// Packets received whose mean magnitude is loud (not silence).
    fn loud_packets(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .means
            .iter()
            .filter(|m| m.abs() > 0)
            .count()
    }
}

impl Drop for Ua {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn sdp_media(msg: &str) -> Option<(String, u16)> {
    let ip = msg
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .to_owned();
    let port = msg
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ip, port))
}

/// A BYE from the callee side of the dialog `invite` created.
fn bye_for(invite: &str, me: SocketAddr, rtp_port: u16) -> String {
    let from = header(invite, "From").unwrap_or("");
    let to = header(invite, "To").unwrap_or("");
    let call_id = header(invite, "Call-ID").unwrap_or("");
    let contact = header(invite, "Contact")
        .unwrap_or("")
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    format!(
        "BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbye{rtp_port}\r\nFrom: {to};tag=ua{rtp_port}\r\nTo: {from}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A REFER (blind transfer to `target`) from the callee side of the
/// dialog `invite` created.
fn refer_for(invite: &str, me: SocketAddr, rtp_port: u16, target: &str) -> String {
    let from = header(invite, "From").unwrap_or("");
    let to = header(invite, "To").unwrap_or("");
    let call_id = header(invite, "Call-ID").unwrap_or("");
    let contact = header(invite, "Contact")
        .unwrap_or("")
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    format!(
        "REFER {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKref{rtp_port}\r\nFrom: {to};tag=ua{rtp_port}\r\nTo: {from}\r\nCall-ID: {call_id}\r\nCSeq: 1 REFER\r\nMax-Forwards: 70\r\nContact: <sip:ua@{me}>\r\nRefer-To: <{target}>\r\nReferred-By: <sip:ua@{me}>\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Sends `level` as PCMU every 20 ms and records what arrives.
async fn run_media(
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    level: i16,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut seq: u16 = 1;
    let mut ts: u32 = 0;
    let ssrc: u32 = 0x1234_0000 | u32::from(to.port());
    let mut buf = [0u8; 2048];
    for _ in 0..3_000 {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let mut pkt = vec![0x80, 0];
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend_from_slice(&ts.to_be_bytes());
                pkt.extend_from_slice(&ssrc.to_be_bytes());
                pkt.extend(std::iter::repeat_n(ulaw_encode(level), 160));
                let _ = sock.send_to(&pkt, to).await;
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
            }
            r = sock.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    if n > 12 {
                        let body = &buf[12..n];
                        let sum: i32 = body.iter().map(|&b| i32::from(ulaw_decode(b))).sum();
                        seen.lock().unwrap().means.push(sum / body.len() as i32);
                    }
                }
            }
        }
    }
}

/// The in-memory agent directory: a list of agents, free or not.
#[derive(Default)]
struct Desk {
    agents: Mutex<Vec<(String, String, bool)>>,
    log: Mutex<Vec<(String, String)>>,
}

#[async_trait::async_trait]
impl AgentDesk for Desk {
    async fn reserve(&self, r: &Reservation) -> anyhow::Result<Option<ReservedAgent>> {
        let mut agents = self.agents.lock().unwrap();
        for (id, uri, free) in agents.iter_mut() {
            let wanted = r.agent_id.as_ref().is_none_or(|a| a == id);
            if *free && wanted && !r.exclude.contains(id) {
                *free = false;
                self.log
                    .lock()
                    .unwrap()
                    .push((id.clone(), "reserved".into()));
                return Ok(Some(ReservedAgent {
                    id: id.clone(),
                    sip_uri: uri.clone(),
                }));
            }
        }
        Ok(None)
    }

    async fn set_state(
        &self,
        agent_id: &str,
        state: &str,
        _call_id: &str,
        _reason: &str,
    ) -> anyhow::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push((agent_id.to_owned(), state.to_owned()));
        if state == "available" || state == "wrap_up" {
            for (id, _, free) in self.agents.lock().unwrap().iter_mut() {
                if id == agent_id && state == "available" {
                    *free = true;
                }
            }
        }
        Ok(())
    }
}

/// The bridge's context over `desk`, and its counters.
fn bridge_ctx(
    desk: Arc<Desk>,
    agent_answer: Duration,
    transfer_hosts: Vec<String>,
) -> (Arc<BridgeContext>, BridgeMetrics) {
    let metrics = BridgeMetrics::new().unwrap();
    let bctx = Arc::new(BridgeContext {
        desk,
        agent_answer,
        prompt: Arc::new(media_processor::call::bridge::builtin_prompt()),
        metrics: metrics.clone(),
        transfer_hosts,
        transfers: Default::default(),
    });
    (bctx, metrics)
}

fn with_bridge(mut ctx: CallContext, desk: Arc<Desk>, agent_answer: Duration) -> CallContext {
    ctx.bridge = Some(bridge_ctx(desk, agent_answer, Vec::new()).0);
    ctx
}

async fn run(ctx: &CallContext, cmd: &dialstack_contract::DialCommand) -> (Report, Vec<Progress>) {
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

fn bridged(abandon_after_ms: u64) -> BridgeSpec {
    BridgeSpec {
        skills: BTreeMap::new(),
        agent_id: None,
        abandon_after_ms,
        abandon_message: Say::default(),
    }
}

const CALLEE: i16 = 1_000;
const AGENT: i16 = -3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_call_is_bridged_with_audio_both_ways_and_the_agent_cycles() {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let agent = Ua::start(Behaviour {
        answer: true,
        level: AGENT,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let desk = Arc::new(Desk::default());
    desk.agents
        .lock()
        .unwrap()
        .push(("ag1".into(), agent.uri("ag1"), true));
    let (ctx, _stop) = context(callee.addr, T1).await;
    let ctx = with_bridge(ctx, desk.clone(), Duration::from_secs(2));
    let mut cmd = command(2_500, 5_000);
    cmd.bridge = Some(bridged(2_000));
    let (report, progress) = run(&ctx, &cmd).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    let leg = report.agent.as_ref().expect("an agent leg");
    assert_eq!(leg.agent_id, "ag1");
    assert!(leg.wait_ms < 2_000, "{leg:?}");
    assert!(leg.talk_ms > 1_000, "{leg:?}");
    assert!(
        progress
            .iter()
            .any(|p| matches!(p, Progress::Bridged { agent_id, .. } if agent_id == "ag1")),
        "{progress:?}"
    );
    // The agent's INVITE asked for auto-answer, with its own Call-ID.
    let invites = agent.seen.lock().unwrap().invites.clone();
    assert_eq!(invites.len(), 1);
    assert_eq!(header(&invites[0], "Answer-Mode"), Some("Auto"));
    assert!(header(&invites[0], "Call-Info")
        .unwrap()
        .contains("answer-after=0"));
    assert_ne!(header(&invites[0], "Call-ID"), Some(cmd.call_id.as_str()));
    // Audio both ways: most of what each side heard is the other's voice.
    let (share, n) = agent.heard_share(CALLEE);
    assert!(
        n > 40 && share > 0.6,
        "agent heard the callee in {share} of {n}"
    );
    let (share, n) = callee.heard_share(AGENT);
    assert!(
        n > 40 && share > 0.6,
        "callee heard the agent in {share} of {n}"
    );
    // The talk limit hung up the callee; the agent got BYE too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(agent.seen.lock().unwrap().got_bye, "agent leg ended");
    let states: Vec<String> = desk
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(states, ["reserved", "on_call", "wrap_up"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_hanging_up_ends_the_agent_leg() {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        bye_after: Some(Duration::from_millis(1_200)),
        ..Behaviour::default()
    })
    .await;
    let agent = Ua::start(Behaviour {
        answer: true,
        level: AGENT,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let desk = Arc::new(Desk::default());
    desk.agents
        .lock()
        .unwrap()
        .push(("ag1".into(), agent.uri("ag1"), true));
    let (ctx, _stop) = context(callee.addr, T1).await;
    let ctx = with_bridge(ctx, desk.clone(), Duration::from_secs(2));
    let mut cmd = command(20_000, 5_000);
    cmd.bridge = Some(bridged(2_000));
    let started = std::time::Instant::now();
    let (report, _) = run(&ctx, &cmd).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.outcome, Outcome::AnsweredHuman);
    assert!(report.agent.is_some());
    assert!(agent.seen.lock().unwrap().got_bye, "the agent got BYE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_who_does_not_answer_is_released_and_the_next_is_bridged() {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let sleepy = Ua::start(Behaviour {
        answer: false,
        level: AGENT,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let agent = Ua::start(Behaviour {
        answer: true,
        level: AGENT,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let desk = Arc::new(Desk::default());
    {
        let mut a = desk.agents.lock().unwrap();
        a.push(("sleepy".into(), sleepy.uri("sleepy"), true));
        a.push(("ag2".into(), agent.uri("ag2"), true));
    }
    let (ctx, _stop) = context(callee.addr, T1).await;
    let ctx = with_bridge(ctx, desk.clone(), Duration::from_millis(600));
    let mut cmd = command(1_500, 5_000);
    cmd.bridge = Some(bridged(2_000));
    let (report, _) = run(&ctx, &cmd).await;
    let leg = report.agent.as_ref().expect("bridged to the second agent");
    assert_eq!(leg.agent_id, "ag2");
    assert_eq!(leg.tries, 1);
    assert!(
        sleepy.seen.lock().unwrap().got_cancel,
        "the first agent's call was canceled"
    );
    let log = desk.log.lock().unwrap().clone();
    assert!(
        log.contains(&("sleepy".into(), "available".into())),
        "{log:?}"
    );
    assert!(log.contains(&("ag2".into(), "on_call".into())), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_in_time_plays_the_message_and_abandons() {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let desk = Arc::new(Desk::default());
    let (ctx, _stop) = context(callee.addr, T1).await;
    let ctx = with_bridge(ctx, desk.clone(), Duration::from_secs(2));
    let mut cmd = command(30_000, 5_000);
    cmd.bridge = Some(bridged(500));
    let started = std::time::Instant::now();
    let (report, progress) = run(&ctx, &cmd).await;
    assert_eq!(report.outcome, Outcome::Abandoned, "{report:?}");
    assert!(report.agent.is_none());
    assert!(!progress
        .iter()
        .any(|p| matches!(p, Progress::Bridged { .. })));
    // 0.5 s wait, 1.5 s message, then BYE: well before the 30 s talk time.
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(1_900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(callee.seen.lock().unwrap().got_bye);
    // The message was audible: its three chimes are 0.9 s of sound (45
    // packets) in its 1.5 s.
    let loud = callee.loud_packets();
    assert!((40..=60).contains(&loud), "{loud} loud packets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_calls_the_agent_first_then_the_customer() {
    let customer = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let agent = Ua::start(Behaviour {
        answer: true,
        level: AGENT,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let other = Ua::start(Behaviour {
        answer: true,
        level: AGENT,
        bye_after: None,
        ..Behaviour::default()
    })
    .await;
    let desk = Arc::new(Desk::default());
    {
        let mut a = desk.agents.lock().unwrap();
        a.push(("other".into(), other.uri("other"), true));
        a.push(("me".into(), agent.uri("me"), true));
    }
    let (ctx, _stop) = context(customer.addr, T1).await;
    let ctx = Arc::new(with_bridge(ctx, desk.clone(), Duration::from_secs(2)));
    let mut cmd = command(2_000, 5_000);
    cmd.bridge = Some(BridgeSpec {
        agent_id: Some("me".into()),
        ..bridged(2_000)
    });
    let bctx = ctx.bridge.clone().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        media_processor::call::bridge::run_preview(
            &ctx,
            &bctx,
            &cmd,
            "me",
            tx,
            CancellationToken::new(),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert_eq!(report.agent.as_ref().unwrap().agent_id, "me");
    assert!(
        other.seen.lock().unwrap().invites.is_empty(),
        "only the agent who asked"
    );
    let agent_invite_at = agent.seen.lock().unwrap().invites.len();
    assert_eq!(agent_invite_at, 1);
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    assert!(progress
        .iter()
        .any(|p| matches!(p, Progress::Bridged { .. })));
    let (share, n) = customer.heard_share(AGENT);
    assert!(
        n > 30 && share > 0.6,
        "customer heard the agent in {share} of {n}"
    );
    let (share, n) = agent.heard_share(CALLEE);
    assert!(
        n > 30 && share > 0.5,
        "agent heard the customer in {share} of {n}"
    );
}

const TARGET: i16 = 2_500;

/// A call whose agent asks for a transfer to `target` 0.8 s after
/// answering: bridged to the callee, or with `preview` a preview call (the
/// agent first, then the callee as the customer); returns the report, the
/// agent's UA, the desk and the bridge's counters.
async fn transfer_call(
    callee: &Ua,
    target: String,
    hosts: Vec<String>,
    talk_ms: u64,
    agent_bye: Option<Duration>,
    preview: bool,
) -> (Report, Ua, Arc<Desk>, BridgeMetrics) {
    let agent = Ua::start(Behaviour {
        answer: true,
        level: AGENT,
        refer: Some((Duration::from_millis(800), target)),
        bye_after: agent_bye,
        ..Behaviour::default()
    })
    .await;
    let desk = Arc::new(Desk::default());
    desk.agents
        .lock()
        .unwrap()
        .push(("ag1".into(), agent.uri("ag1"), true));
    let (mut ctx, _stop) = context(callee.addr, T1).await;
    let (bctx, metrics) = bridge_ctx(desk.clone(), Duration::from_secs(2), hosts);
    ctx.bridge = Some(bctx.clone());
    let mut cmd = command(talk_ms, 5_000);
    cmd.bridge = Some(bridged(2_000));
    let report = if preview {
        cmd.bridge = Some(BridgeSpec {
            agent_id: Some("ag1".into()),
            ..bridged(2_000)
        });
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::time::timeout(
            Duration::from_secs(30),
            media_processor::call::bridge::run_preview(
                &ctx,
                &bctx,
                &cmd,
                "ag1",
                tx,
                CancellationToken::new(),
                CancellationToken::new(),
            ),
        )
        .await
        .expect("the preview call ends")
    } else {
        run(&ctx, &cmd).await.0
    };
    (report, agent, desk, metrics)
}

/// A callee (bridged or preview) and its agent, talking; the agent
/// transfers to a target that talks 1.5 s and hangs up. Checks everything
/// a completed blind transfer must show.
async fn transferred_by_refer(preview: bool) {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        ..Behaviour::default()
    })
    .await;
    // The target talks 1.5 s, then hangs up: that ends the call.
    let target = Ua::start(Behaviour {
        answer: true,
        level: TARGET,
        bye_after: Some(Duration::from_millis(1_500)),
        ..Behaviour::default()
    })
    .await;
    let started = std::time::Instant::now();
    let (report, agent, desk, metrics) = transfer_call(
        &callee,
        target.uri("sales"),
        Vec::new(),
        20_000,
        None,
        preview,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    let leg = report.agent.as_ref().expect("an agent leg");
    let t = leg.transfer.as_ref().expect("a transfer");
    assert_eq!(t.target, target.uri("sales"));
    assert!(t.talk_ms >= 1_300, "{t:?}");
    assert!(
        leg.talk_ms < 2_500,
        "the agent's talk ends at the transfer: {leg:?}"
    );
    // The agent's REFER was accepted and followed by NOTIFY 100, then 200
    // ending the subscription; then the agent's leg was hung up.
    {
        let seen = agent.seen.lock().unwrap();
        assert_eq!(
            seen.refer_answers.first(),
            Some(&202),
            "{:?}",
            seen.refer_answers
        );
        let bodies: Vec<&str> = seen.notifies.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(
            bodies,
            ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"],
            "{:?}",
            seen.notifies
        );
        assert!(
            seen.notifies[0].0.starts_with("active"),
            "{:?}",
            seen.notifies
        );
        assert!(
            seen.notifies[1].0.starts_with("terminated"),
            "{:?}",
            seen.notifies
        );
        assert!(seen.got_bye, "the agent's leg was hung up");
    }
    // The target was called plainly (no auto-answer) and the callee talked
    // with it: each heard the other.
    let invites = target.seen.lock().unwrap().invites.clone();
    assert_eq!(invites.len(), 1);
    assert_eq!(header(&invites[0], "Answer-Mode"), None);
    let (share, n) = target.heard_share(CALLEE);
    assert!(
        n > 40 && share > 0.6,
        "target heard the callee in {share} of {n}: {:?}",
        target.seen.lock().unwrap().means
    );
    let heard_target = callee
        .seen
        .lock()
        .unwrap()
        .means
        .iter()
        .filter(|&&m| (m - i32::from(TARGET)).abs() <= 400)
        .count();
    assert!(
        heard_target > 40,
        "callee heard the target in {heard_target} packets"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        callee.seen.lock().unwrap().got_bye,
        "the target's hang-up ended the callee"
    );
    let states: Vec<String> = desk
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(states, ["reserved", "on_call", "wrap_up"]);
    assert_eq!(metrics.transfers.with_label_values(&["completed"]).get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_transfers_the_callee_by_refer() {
    transferred_by_refer(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_agent_transfers_the_customer_by_refer() {
    transferred_by_refer(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_transfer_target_leaves_the_agent_on_the_call() {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        ..Behaviour::default()
    })
    .await;
    let target = Ua::start(Behaviour {
        busy: true,
        ..Behaviour::default()
    })
    .await;
    let (report, agent, _desk, metrics) =
        transfer_call(&callee, target.uri("sales"), Vec::new(), 3_000, None, false).await;
    let leg = report.agent.as_ref().expect("an agent leg");
    assert!(leg.transfer.is_none(), "{leg:?}");
    // Talk ran to the limit with the agent.
    assert!(leg.talk_ms >= 2_500, "{leg:?}");
    let seen = agent.seen.lock().unwrap();
    let bodies: Vec<&str> = seen.notifies.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["SIP/2.0 100 Trying", "SIP/2.0 486 Transfer Failed"],
        "{:?}",
        seen.notifies
    );
    assert_eq!(metrics.transfers.with_label_values(&["failed"]).get(), 1);
    let (share, n) = callee.heard_share(AGENT);
    assert!(
        n > 100 && share > 0.6,
        "callee still heard the agent in {share} of {n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_host_not_allowed_is_refused() {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        ..Behaviour::default()
    })
    .await;
    // A stranger's destination (TEST-NET-2): never dialed.
    let (report, agent, _desk, metrics) = transfer_call(
        &callee,
        "sip:premium@198.51.100.7".into(),
        vec!["pbx.example".into()],
        2_500,
        None,
        false,
    )
    .await;
    let leg = report.agent.as_ref().expect("an agent leg");
    assert!(leg.transfer.is_none(), "{leg:?}");
    let seen = agent.seen.lock().unwrap();
    let bodies: Vec<&str> = seen.notifies.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["SIP/2.0 100 Trying", "SIP/2.0 403 Forbidden"],
        "{:?}",
        seen.notifies
    );
    assert_eq!(metrics.transfers.with_label_values(&["refused"]).get(), 1);
    assert_eq!(metrics.transfers.with_label_values(&["failed"]).get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_cannot_transfer_the_call() {
    let target = Ua::start(Behaviour {
        answer: true,
        level: TARGET,
        ..Behaviour::default()
    })
    .await;
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        refer: Some((Duration::from_millis(300), target.uri("x"))),
        ..Behaviour::default()
    })
    .await;
    let desk = Arc::new(Desk::default());
    let (ctx, _stop) = context(callee.addr, T1).await;
    let ctx = with_bridge(ctx, desk, Duration::from_secs(2));
    let cmd = command(1_500, 5_000);
    let (report, _) = run(&ctx, &cmd).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    assert_eq!(callee.seen.lock().unwrap().refer_answers, [403]);
    assert!(callee.seen.lock().unwrap().notifies.is_empty());
    assert!(
        target.seen.lock().unwrap().invites.is_empty(),
        "nobody was called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_transfer_goes_on_when_the_agent_hangs_up_at_once() {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        ..Behaviour::default()
    })
    .await;
    // The target answers after its 180 at once, but the agent's phone
    // sends BYE 50 ms after its REFER, before the target answers.
    let target = Ua::start(Behaviour {
        answer: true,
        level: TARGET,
        bye_after: Some(Duration::from_millis(1_000)),
        ..Behaviour::default()
    })
    .await;
    let (report, _agent, desk, metrics) = transfer_call(
        &callee,
        target.uri("sales"),
        Vec::new(),
        20_000,
        Some(Duration::from_millis(850)),
        false,
    )
    .await;
    let leg = report.agent.as_ref().expect("an agent leg");
    let t = leg
        .transfer
        .as_ref()
        .expect("the transfer went on without the agent");
    assert!(t.talk_ms >= 800, "{t:?}");
    assert_eq!(metrics.transfers.with_label_values(&["completed"]).get(), 1);
    assert_eq!(target.seen.lock().unwrap().invites.len(), 1);
    let states: Vec<String> = desk
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(states, ["reserved", "on_call", "wrap_up"]);
}

/// An abandoned call of a campaign with its own message: `say` played
/// instead of the chime. Returns the report, the time to the BYE and the
/// loud packets the callee heard.
async fn abandon_with(
    test: &str,
    say: Say,
    stored: Option<(&str, Vec<i16>)>,
) -> (media_processor::call::Report, Duration, usize) {
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        ..Behaviour::default()
    })
    .await;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-logs/bridge")
        .join(format!("{test}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let engines = common::engines::engines(&dir);
    if let Some((id, pcm)) = stored {
        engines.prompts.0.lock().unwrap().insert(
            id.to_owned(),
            media_processor::call::ivr::PromptAudio::Pcm(Arc::new(pcm)),
        );
    }
    let (ctx, _stop) = context(callee.addr, T1).await;
    let mut ctx = with_bridge(ctx, Arc::new(Desk::default()), Duration::from_secs(2));
    ctx.ivr = Some(engines.ivr.clone());
    let mut cmd = command(30_000, 5_000);
    cmd.fields = BTreeMap::from([("first_name".to_owned(), "Ada".to_owned())]);
    cmd.bridge = Some(BridgeSpec {
        abandon_message: say,
        ..bridged(500)
    });
    let started = std::time::Instant::now();
    let (report, _) = run(&ctx, &cmd).await;
    let took = started.elapsed();
    assert!(callee.seen.lock().unwrap().got_bye, "{test}: hung up");
    (report, took, callee.loud_packets())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_hears_the_campaigns_own_message() {
    // A stored prompt: 3 s of steady sound, 150 packets, not the chime's 45.
    let (report, took, loud) = abandon_with(
        "stored",
        Say {
            prompt: Some("acme-abandon".into()),
            ..Say::default()
        },
        Some(("acme-abandon", vec![4_000; 24_000])),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Abandoned, "{report:?}");
    assert!((140..=160).contains(&loud), "{loud} loud packets");
    assert!(
        took > Duration::from_millis(3_400) && took < Duration::from_secs(8),
        "0.5 s wait, 3 s message: {took:?}"
    );

    // Text rendered by espeak-ng with the lead's name: seconds of speech.
    let (report, took, loud) = abandon_with(
        "text",
        Say {
            text: Some(
                "This is Acme calling {first_name}. Please call us back on 0800 123 456.".into(),
            ),
            ..Say::default()
        },
        None,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Abandoned, "{report:?}");
    assert!(loud > 100, "{loud} loud packets: speech, not the chime");
    assert!(took > Duration::from_millis(2_500), "{took:?}");

    // A prompt that is not there: the deployment's chime, never silence.
    let (report, _, loud) = abandon_with(
        "missing",
        Say {
            prompt: Some("deleted-prompt".into()),
            ..Say::default()
        },
        None,
    )
    .await;
    assert_eq!(report.outcome, Outcome::Abandoned, "{report:?}");
    assert!((40..=60).contains(&loud), "{loud} loud packets: the chime");
}

/// The blind transfer against real SIP peers: the agent's phone is SIPp
/// (auto-answer, then REFER; it fails unless 202, NOTIFY 100, NOTIFY 200
/// ending the subscription and our BYE come in that order), the target is
/// SIPp's built-in UAS with RTP echo, which must see our BYE when the
/// callee hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_agent_transfers_the_callee_to_a_sipp_target() {
    let target = common::sipp(None).await;
    let target_uri = format!("sip:sales@{}", target.addr());
    let agent = common::sipp_with(
        Some(common::scenario("uas_agent_refer.xml")),
        &["-key", "target", &target_uri, "-rtp_echo"],
    )
    .await;
    // The callee talks with the target 2 s after answering, then hangs up.
    let callee = Ua::start(Behaviour {
        answer: true,
        level: CALLEE,
        bye_after: Some(Duration::from_millis(4_000)),
        ..Behaviour::default()
    })
    .await;
    let desk = Arc::new(Desk::default());
    desk.agents
        .lock()
        .unwrap()
        .push(("ag1".into(), format!("sip:ag1@{}", agent.addr()), true));
    let (ctx, _stop) = context(callee.addr, T1).await;
    let ctx = with_bridge(ctx, desk.clone(), Duration::from_secs(2));
    let mut cmd = command(30_000, 5_000);
    cmd.bridge = Some(bridged(2_000));
    let (report, _) = run(&ctx, &cmd).await;
    assert_eq!(report.outcome, Outcome::AnsweredHuman, "{report:?}");
    let leg = report.agent.as_ref().expect("an agent leg");
    let t = leg.transfer.as_ref().expect("a transfer");
    assert_eq!(t.target, target_uri);
    assert!(
        t.talk_ms >= 1_000,
        "the callee talked with the target: {t:?}"
    );
    assert_eq!(
        agent.exit_code().await,
        0,
        "SIPp agent: REFER, NOTIFYs, BYE"
    );
    assert_eq!(
        target.exit_code().await,
        0,
        "SIPp target: answered, then our BYE"
    );
    let log = desk.log.lock().unwrap().clone();
    assert!(log.contains(&("ag1".into(), "wrap_up".into())), "{log:?}");
    let (share, n) = callee.heard_share(CALLEE);
    assert!(
        n > 50 && share > 0.5,
        "the callee heard the target's echo of its own voice in {share} of {n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_agent_cannot_transfer_a_customer_still_ringing() {
    // The customer never answers (rings until our CANCEL at 3 s).
    let customer = Ua::start(Behaviour {
        answer: false,
        level: CALLEE,
        ..Behaviour::default()
    })
    .await;
    let target = Ua::start(Behaviour {
        answer: true,
        level: TARGET,
        ..Behaviour::default()
    })
    .await;
    let (report, agent, desk, metrics) = transfer_call(
        &customer,
        target.uri("sales"),
        Vec::new(),
        20_000,
        None,
        true,
    )
    .await;
    assert_eq!(report.outcome, Outcome::NoAnswer, "{report:?}");
    assert!(report.agent.as_ref().unwrap().transfer.is_none());
    {
        let seen = agent.seen.lock().unwrap();
        assert_eq!(
            seen.refer_answers.first(),
            Some(&202),
            "{:?}",
            seen.refer_answers
        );
        let bodies: Vec<&str> = seen.notifies.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies, ["SIP/2.0 100 Trying", "SIP/2.0 403 Forbidden"]);
        assert!(
            seen.got_bye,
            "the agent's leg ended with the unanswered customer"
        );
    }
    assert!(
        target.seen.lock().unwrap().invites.is_empty(),
        "nobody was called"
    );
    assert!(customer.seen.lock().unwrap().got_cancel);
    let states: Vec<String> = desk
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(states, ["reserved", "on_call", "wrap_up"]);
    assert_eq!(metrics.transfers.with_label_values(&["refused"]).get(), 1);
}
