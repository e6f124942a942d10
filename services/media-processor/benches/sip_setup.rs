//! Call set-ups per second that one media-processor call engine sustains
//! against a SIPp UAS (answer, our 1 s of talk with RTP, our BYE), and the
//! CPU this process spends per set-up. Run by `scripts/bench-sip.sh`.
//!
//! Usage: sip_setup --sipp HOST:PORT --rate CALLS_PER_S --seconds N
//! [--talk-ms MS] [--flood DATAGRAMS_PER_S]
//!
//! With `--flood`, a thread sprays the SIP port with garbage and mutated
//! SIP at that rate for the length of the run, and the report adds what the
//! edge dropped and the process's peak memory.
//!
//! Calls are started at the given rate for N seconds (open loop: a slow
//! engine shows up as a lower achieved rate and longer set-up times, not as
//! a politely slower load), then the run waits for every call to end.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_contract::{DialCommand, Outcome};
use media_processor::call::{place_call, CallContext};
use media_processor::rtp::PortPool;
use media_processor::sip::{SipMetrics, SipTransport};
use tokio_util::sync::CancellationToken;

use common::{arg, cpu_seconds, rss_kib, status_kib};

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Sends garbage and broken SIP to `sip` at `pps` datagrams a second until
/// `stop`; returns how many it sent.
fn spray(sip: std::net::SocketAddr, pps: u64, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("flood socket");
    let mut rng = fastrand::Rng::with_seed(99);
    let template = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKflood\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: bench-1-00000000\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\na\xc3\xa9".to_vec();
    let batch = (pps / 1_000).max(1);
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for _ in 0..batch {
            let mut d = template.clone();
            match rng.u8(..3) {
                0 => d.truncate(rng.usize(..d.len())),
                1 => {
                    let i = rng.usize(..d.len());
                    d[i] = rng.u8(..);
                }
                _ => d = (0..rng.usize(1..1200)).map(|_| rng.u8(..)).collect(),
            }
            if sock.send_to(&d, sip).is_ok() {
                sent += 1;
            }
        }
        // Keep to the rate: sleep until the next millisecond's batch is due.
        let due = Duration::from_secs_f64(sent as f64 / pps as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    sent
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let sipp: std::net::SocketAddr = arg("--sipp")
        .expect("--sipp HOST:PORT")
        .parse()
        .expect("--sipp address");
    let rate: f64 = arg("--rate").map_or(500.0, |v| v.parse().expect("--rate"));
    let seconds: f64 = arg("--seconds").map_or(10.0, |v| v.parse().expect("--seconds"));
    let talk_ms: u64 = arg("--talk-ms").map_or(1_000, |v| v.parse().expect("--talk-ms"));
    let flood: u64 = arg("--flood").map_or(0, |v| v.parse().expect("--flood"));
    let stop = CancellationToken::new();
    let transport = SipTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![sipp],
        SipMetrics::new(),
    )
    .await
    .expect("bind sip");
    tokio::spawn(transport.clone().run(stop.clone()));
    let setup = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("s", "s")).unwrap();
    let ctx = Arc::new(CallContext {
        bridge: None,
        ivr: None,
        transport,
        trunk: sipp,
        trunk_host: sipp.to_string(),
        media_ip: "127.0.0.1".parse().unwrap(),
        ports: Arc::new(PortPool::parse("0").unwrap()),
        t1: Duration::from_millis(500),
        setup_seconds: setup,
        credentials: None,
        drain_talk: Duration::from_secs(1),
        media: media_processor::rtp::stream::MediaContext::standalone(Default::default(), false),
    });
    let sip = ctx.transport.local_addr().expect("sip addr");
    let flood_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss0 = rss_kib();
    let flooder = (flood > 0).then(|| {
        let stop = flood_stop.clone();
        std::thread::spawn(move || spray(sip, flood, &stop))
    });
    let total = (rate * seconds).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(total as usize);
    for n in 0..total {
        tick.tick().await;
        let ctx = ctx.clone();
        handles.push(tokio::spawn(async move {
            let cmd = DialCommand {
                attempt_id: format!("a{n}"),
                call_id: format!("bench-{n}-{:08x}", fastrand::u32(..)),
                campaign_id: "bench".into(),
                phone: "+14155550101".into(),
                caller_id: "+14155550100".into(),
                talk_time_ms: talk_ms,
                ring_timeout_ms: 30_000,
                team: None,
                record: false,
                recording_retention_days: None,
                bridge: None,
                ivr: None,
                amd: None,
                transcribe: false,
                fields: Default::default(),
            };
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let started = Instant::now();
            let drain = tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    if let media_processor::call::Progress::Answered { .. } = p {
                        return Some(started.elapsed());
                    }
                }
                None
            });
            let report = place_call(
                &ctx,
                &cmd,
                tx,
                CancellationToken::new(),
                CancellationToken::new(),
            )
            .await;
            (report, drain.await.ok().flatten())
        }));
    }
    let launched = t0.elapsed();
    let mut answered = 0u64;
    let mut failed = 0u64;
    let mut setups = Vec::new();
    for h in handles {
        if let Ok((report, setup)) = h.await {
            if report.outcome == Outcome::AnsweredHuman {
                answered += 1;
            } else {
                failed += 1;
            }
            if let Some(s) = setup {
                setups.push(s.as_secs_f64() * 1_000.0);
            }
        }
    }
    flood_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sprayed = flooder.map(|h| h.join().unwrap_or(0)).unwrap_or(0);
    let wall = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    if flood > 0 {
        let m = ctx.transport.metrics();
        let dropped: u64 = media_processor::sip::transport::DropReason::ALL
            .iter()
            .map(|r| m.dropped(*r))
            .sum();
        println!(
            "flood: sent={sprayed} ({:.0}/s) dropped_by_edge={dropped} malformed={} unknown_source={} overload={} rss_kib_before={rss0} rss_kib_peak={}",
            sprayed as f64 / wall.as_secs_f64(),
            m.dropped(media_processor::sip::transport::DropReason::Malformed),
            m.dropped(media_processor::sip::transport::DropReason::UnknownSource),
            m.dropped(media_processor::sip::transport::DropReason::Overload),
            peak_rss_kib(),
        );
    }
    setups.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let achieved = total as f64 / launched.as_secs_f64();
    println!(
        "rate={rate} offered_calls={total} launched_in={:.2}s achieved_setups_per_s={achieved:.1} answered={answered} failed={failed} setup_ms_p50={:.1} setup_ms_p99={:.1} wall={:.2}s cpu_s={cpu:.2} cpu_core_share={:.2} cpu_ms_per_call={:.3} core_pct_per_call_per_s={:.4}",
        launched.as_secs_f64(),
        percentile(&setups, 0.5),
        percentile(&setups, 0.99),
        wall.as_secs_f64(),
        cpu / wall.as_secs_f64(),
        cpu * 1_000.0 / total as f64,
        // Share of one core that one set-up per second costs, in percent.
        cpu / total as f64 * 100.0,
    );
    stop.cancel();
}
