//! Call set-ups per second that one media-processor call engine sustains
//! against a SIPp UAS (answer, our 1 s of talk with RTP, our BYE), and the
//! CPU this process spends per set-up. Run by `scripts/bench-sip.sh`.
//!
//! Usage: sip_setup --sipp HOST:PORT --rate CALLS_PER_S --seconds N
//!
//! Calls are started at the given rate for N seconds (open loop: a slow
//! engine shows up as a lower achieved rate and longer set-up times, not as
//! a politely slower load), then the run waits for every call to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_contract::{DialCommand, Outcome};
use media_processor::call::{place_call, CallContext};
use media_processor::rtp::PortPool;
use media_processor::sip::{SipMetrics, SipTransport};
use tokio_util::sync::CancellationToken;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// This process's user + system CPU seconds (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
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
        transport,
        trunk: sipp,
        trunk_host: sipp.to_string(),
        media_ip: "127.0.0.1".parse().unwrap(),
        ports: Arc::new(PortPool::parse("0").unwrap()),
        t1: Duration::from_millis(500),
        setup_seconds: setup,
        credentials: None,
        rtp_latch: false,
        drain_talk: Duration::from_secs(1),
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
    let wall = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
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
