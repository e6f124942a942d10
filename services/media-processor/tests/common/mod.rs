//! Helpers of media-processor's SIP tests: SIPp as the far end, a call
//! context on port 0, a dial command, and a call run to its end.
#![allow(dead_code)]

pub mod engines;
pub mod pcap;
pub mod recorded;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use dialstack_contract::DialCommand;
use media_processor::call::{place_call, CallContext, Progress, Report};
use media_processor::rtp::PortPool;
use media_processor::sip::digest::Credentials;
use media_processor::sip::{SipMetrics, SipTransport};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(name)
}

pub struct Sipp {
    pub child: Child,
    pub port: u16,
}

/// SIPp as a UAS for one call: `None` runs the built-in `uas` with RTP echo.
pub async fn sipp(scenario_file: Option<PathBuf>) -> Sipp {
    sipp_with(scenario_file, &[]).await
}

/// SIPp as a UAS for one call with extra arguments (`-key name value`...).
pub async fn sipp_with(scenario_file: Option<PathBuf>, extra: &[&str]) -> Sipp {
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
    .args(extra)
    .args([
        "-m",
        "1",
        "-nostdin",
        "-trace_msg",
        "-trace_err",
        "-error_file",
    ])
    .arg(logs.join(format!("sipp-{port}-errors.log")))
    .current_dir(&logs)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("sipp installed (scripts/test-env.sh installs sip-tester)");
    // Ready once its SIP port is bound (a fixed pause was too short on a
    // loaded machine: the INVITE went to a closed port).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !udp_bound(port) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    Sipp { child, port }
}

/// Whether a socket is bound to UDP `port` on 127.0.0.1 (read from
/// `/proc/net/udp`, without binding it ourselves).
fn udp_bound(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(needle.as_str()))
        })
        .unwrap_or(false)
}

impl Sipp {
    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub async fn exit_code(mut self) -> i32 {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("sipp ends its call")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

pub async fn context(trunk: SocketAddr, t1: Duration) -> (CallContext, CancellationToken) {
    context_with(trunk, t1, None).await
}

pub async fn context_with(
    trunk: SocketAddr,
    t1: Duration,
    credentials: Option<Credentials>,
) -> (CallContext, CancellationToken) {
    context_full(trunk, t1, credentials, false).await
}

/// A context whose trunk is reached over TCP.
pub async fn context_tcp(trunk: SocketAddr, t1: Duration) -> (CallContext, CancellationToken) {
    context_full(trunk, t1, None, true).await
}

async fn context_full(
    trunk: SocketAddr,
    t1: Duration,
    credentials: Option<Credentials>,
    tcp: bool,
) -> (CallContext, CancellationToken) {
    let stop = CancellationToken::new();
    let transport = SipTransport::bind_with(
        "127.0.0.1:0".parse().unwrap(),
        vec![trunk],
        tcp.then_some(trunk),
        SipMetrics::new(),
    )
    .await
    .unwrap();
    tokio::spawn(transport.clone().run(stop.clone()));
    let ctx = CallContext {
        bridge: None,
        ivr: None,
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
        credentials,
        drain_talk: Duration::from_secs(1),
        media: media_processor::rtp::stream::MediaContext::standalone(Default::default(), false),
    };
    (ctx, stop)
}

pub fn command(talk_time_ms: u64, ring_timeout_ms: u64) -> DialCommand {
    DialCommand {
        attempt_id: "a1".into(),
        call_id: uuid::Uuid::now_v7().to_string(),
        campaign_id: "k1".into(),
        phone: "+14155550101".into(),
        caller_id: "+14155550100".into(),
        talk_time_ms,
        ring_timeout_ms,
        team: None,
        record: false,
        recording_retention_days: None,
        bridge: None,
        ivr: None,
        amd: None,
        transcribe: false,
        fields: Default::default(),
    }
}

pub async fn call(ctx: &CallContext, cmd: &DialCommand) -> (Report, Vec<Progress>) {
    call_until(ctx, cmd, CancellationToken::new(), CancellationToken::new()).await
}

pub async fn call_until(
    ctx: &CallContext,
    cmd: &DialCommand,
    hangup: CancellationToken,
    shutdown: CancellationToken,
) -> (Report, Vec<Progress>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = tokio::time::timeout(
        Duration::from_secs(40),
        place_call(ctx, cmd, tx, hangup, shutdown),
    )
    .await
    .expect("the call ends");
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    (report, progress)
}

/// A stateless SIP proxy for one test: requests from the caller get our Via
/// (and, when `record_route`, a Record-Route naming us) and go to `callee`;
/// our own Route entry is popped; responses lose our Via and go back. It
/// keeps every message it saw, for the test to read (and forge from).
pub struct Proxy {
    pub addr: SocketAddr,
    pub sock: Arc<tokio::net::UdpSocket>,
    pub seen: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Proxy {
    pub async fn start(callee: SocketAddr, record_route: bool) -> Self {
        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let seen: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
        let log = seen.clone();
        let sock2 = sock.clone();
        tokio::spawn(async move {
            let mut caller: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65_535];
            let mut n_branch = 0u32;
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let first = text.lines().next().unwrap_or("").to_owned();
                let is_response = first.starts_with("SIP/2.0");
                let direction = if from == callee {
                    "from_callee"
                } else {
                    "from_caller"
                };
                log.lock()
                    .unwrap()
                    .push((direction.to_owned(), text.clone()));
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                let mut lines: Vec<String> = head.lines().map(str::to_owned).collect();
                if from != callee {
                    caller = Some(from);
                    if is_response {
                        continue;
                    }
                    let me = format!("sip:{addr};lr");
                    if let Some(i) = lines.iter().position(|l| l.starts_with("Route:")) {
                        if lines[i].contains(&me) {
                            lines.remove(i);
                        }
                    }
                    n_branch += 1;
                    lines.insert(
                        1,
                        format!("Via: SIP/2.0/UDP {addr};branch=z9hG4bKprx{n_branch}"),
                    );
                    if record_route && first.starts_with("INVITE ") {
                        lines.insert(2, format!("Record-Route: <{me}>"));
                    }
                    let out = format!("{}\r\n\r\n{body}", lines.join("\r\n"));
                    let _ = sock.send_to(out.as_bytes(), callee).await;
                } else if is_response {
                    // Our Via is the first value, on its own line or first
                    // in a comma list.
                    if let Some(i) = lines.iter().position(|l| l.starts_with("Via:")) {
                        match lines[i].split_once(',') {
                            Some((_, rest)) => lines[i] = format!("Via: {}", rest.trim()),
                            None => {
                                lines.remove(i);
                            }
                        }
                    }
                    let out = format!("{}\r\n\r\n{body}", lines.join("\r\n"));
                    if let Some(c) = caller {
                        let _ = sock.send_to(out.as_bytes(), c).await;
                    }
                } else if let Some(c) = caller {
                    let _ = sock.send_to(&buf[..n], c).await;
                }
            }
        });
        Self {
            addr,
            sock: sock2,
            seen,
        }
    }

    /// The messages seen from the caller whose first line starts with `prefix`.
    pub fn sent_by_caller(&self, prefix: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, t)| d == "from_caller" && t.starts_with(prefix))
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// The messages seen from the callee whose first line starts with `prefix`.
    pub fn sent_by_callee(&self, prefix: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, t)| d == "from_callee" && t.starts_with(prefix))
            .map(|(_, t)| t.clone())
            .collect()
    }
}

/// The value of header `name` in a message's text.
pub fn header(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}
