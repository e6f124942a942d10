//! Concurrent answered calls with RTP both ways through the whole media
//! path (gate, jitter buffer, statistics, RTCP, quality, recording): the
//! CPU this process spends per call-second, its memory per call, and
//! kernel drops. SIPp answers every call and echoes our RTP back
//! (`-rtp_echo`). Run by `scripts/bench-media.sh`.
//!
//! Usage: media_load --sipp HOST:PORT --calls N --seconds S [--rate R]
//! [--record 0|1] [--recordings DIR]
//!
//! Calls start at R a second (default 200); once all N are answered the
//! steady window of S seconds is measured; then every call ends.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_common::config::Env;
use dialstack_common::recordings::RecordingStore;
use dialstack_contract::{DialCommand, Outcome, RecordingReady};
use media_processor::call::{place_call, CallContext, Progress};
use media_processor::recording::{Announce, Recorder, RecordingMetrics};
use media_processor::rtp::stream::MediaContext;
use media_processor::rtp::PortPool;
use media_processor::sip::{SipMetrics, SipTransport};
use tokio_util::sync::CancellationToken;

use common::{arg, cpu_seconds, rss_kib};

/// `Udp: ... RcvbufErrors` of `/proc/net/snmp` (every socket of the host).
fn rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Counts announcements instead of writing an outbox.
struct Count(AtomicU64);

#[async_trait::async_trait]
impl Announce for Count {
    async fn ready(&self, _: &RecordingReady) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn transcript(&self, _: &dialstack_contract::CallTranscript) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let sipp: std::net::SocketAddr = arg("--sipp")
        .expect("--sipp HOST:PORT")
        .parse()
        .expect("--sipp address");
    let calls: usize = arg("--calls").map_or(100, |v| v.parse().expect("--calls"));
    let seconds: u64 = arg("--seconds").map_or(20, |v| v.parse().expect("--seconds"));
    let rate: f64 = arg("--rate").map_or(200.0, |v| v.parse().expect("--rate"));
    let record = arg("--record").is_none_or(|v| v == "1");
    let dir = arg("--recordings").unwrap_or_else(|| "target/bench-recordings".into());
    let stop = CancellationToken::new();
    let transport = SipTransport::bind(
        "127.0.0.1:0".parse().unwrap(),
        vec![sipp],
        SipMetrics::new(),
    )
    .await
    .expect("bind sip");
    tokio::spawn(transport.clone().run(stop.clone()));
    let announced = Arc::new(Count(AtomicU64::new(0)));
    let recorder = if record {
        let store_dir = std::path::absolute(format!("{dir}/store")).expect("path");
        let env = Env::from_pairs([(
            "DIALSTACK_RECORDINGS_URL",
            format!("file://{}", store_dir.display()),
        )]);
        let store = RecordingStore::from_env(&env).expect("store");
        Some(
            Recorder::start(
                format!("{dir}/spool").into(),
                calls * 2,
                Arc::new(store),
                announced.clone(),
                RecordingMetrics::new().expect("metrics"),
                stop.clone(),
            )
            .expect("recorder"),
        )
    } else {
        None
    };
    let jitter = dialstack_media::jitter::JitterConfig::from_lookup(|k| std::env::var(k).ok())
        .expect("DIALSTACK_JITTER_BUFFER_* settings");
    let mut media = MediaContext::standalone(jitter, false);
    if let Some(r) = recorder {
        Arc::get_mut(&mut media).expect("not shared yet").recorder = Some(r);
    }
    let ctx = Arc::new(CallContext {
        bridge: None,
        ivr: None,
        transport,
        trunk: sipp,
        trunk_host: sipp.to_string(),
        media_ip: "127.0.0.1".parse().unwrap(),
        ports: Arc::new(PortPool::parse("30000-59999").unwrap()),
        t1: Duration::from_millis(500),
        setup_seconds: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
            "setup", "setup",
        ))
        .unwrap(),
        credentials: None,
        drain_talk: Duration::from_secs(1),
        media,
    });
    let rss0 = rss_kib();
    let answered = Arc::new(AtomicU64::new(0));
    let ramp = Duration::from_secs_f64(calls as f64 / rate);
    // Every call lasts past the steady window: ramp, window, margin.
    let talk_ms = (ramp + Duration::from_secs(seconds + 3)).as_millis() as u64;
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(calls);
    for i in 0..calls {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let ctx = ctx.clone();
        let answered = answered.clone();
        handles.push(tokio::spawn(async move {
            let cmd = DialCommand {
                attempt_id: format!("a{i}"),
                call_id: format!("media-{}-{i}", std::process::id()),
                campaign_id: "bench".into(),
                phone: format!("+1415{:07}", i),
                caller_id: "+14155550000".into(),
                talk_time_ms: talk_ms,
                ring_timeout_ms: 30_000,
                team: None,
                record,
                recording_retention_days: None,
                bridge: None,
                ivr: None,
                amd: None,
                transcribe: false,
                fields: Default::default(),
            };
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let count = tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    if let Progress::Answered { .. } = p {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            let report = place_call(
                &ctx,
                &cmd,
                tx,
                CancellationToken::new(),
                CancellationToken::new(),
            )
            .await;
            let _ = count.await;
            report
        }));
    }
    // Steady state: every call answered (or the ramp plus 10 s passed).
    let deadline = Instant::now() + Duration::from_secs(10);
    while (answered.load(Ordering::Relaxed) as usize) < calls && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let live = answered.load(Ordering::Relaxed);
    let rss1 = rss_kib();
    let drops0 = rcvbuf_errors();
    let cpu0 = cpu_seconds();
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = cpu_seconds() - cpu0;
    let window = w0.elapsed().as_secs_f64();
    let drops = rcvbuf_errors() - drops0;
    let mut ok = 0u64;
    let mut sent = 0u64;
    let mut received = 0u64;
    let mut lost = 0u64;
    let mut late = 0u64;
    let mut mos = Vec::new();
    let mut expected = 0u64;
    let mut concealed_frames = 0u64;
    let mut played = 0u64;
    let mut p50 = Vec::new();
    let mut p95 = Vec::new();
    for h in handles {
        if let Ok(r) = h.await {
            if let Some(m) = &r.media {
                played += m.frames_played;
                p50.push(m.delay_p50_ms);
                p95.push(m.delay_p95_ms);
            }
            if r.outcome == Outcome::AnsweredHuman {
                ok += 1;
            }
            sent += r.rtp_sent;
            received += r.rtp_received;
            if let Some(q) = r.quality() {
                lost += q.packets_lost;
                late += q.packets_late;
                expected += q.packets_received - q.packets_duplicated + q.packets_lost;
                concealed_frames += q.concealed_ms / 20;
                mos.push(q.mos);
            }
        }
    }
    // Let the last recordings reach the store.
    let wait = Instant::now();
    while record
        && announced.0.load(Ordering::Relaxed) < ok
        && wait.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mos.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let median_mos = mos.get(mos.len() / 2).copied().unwrap_or(f64::NAN);
    let call_seconds = live as f64 * window;
    p50.sort_unstable();
    p95.sort_unstable();
    let pct = |n: u64, d: u64| {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    };
    println!(
        "{{\"calls\":{calls},\"answered_at_window\":{live},\"window_s\":{window:.1},\"record\":{record},\"cpu_s\":{cpu:.2},\"cores\":{:.3},\"cpu_s_per_call_s\":{:.6},\"rss_kib_per_call\":{:.1},\"rcvbuf_errors\":{drops},\"answered\":{ok},\"rtp_sent\":{sent},\"rtp_received\":{received},\"lost\":{lost},\"late\":{late},\"median_mos\":{median_mos:.2},\"late_pct\":{:.3},\"lost_pct\":{:.3},\"concealed_pct\":{:.3},\"delay_p50_ms\":{},\"delay_p95_ms\":{},\"recordings_stored\":{}}}",
        cpu / window,
        cpu / call_seconds,
        rss1.saturating_sub(rss0) as f64 / live.max(1) as f64,
        pct(late, expected),
        pct(lost, expected),
        pct(concealed_frames, played),
        p50.get(p50.len() / 2).copied().unwrap_or(0),
        p95.get(p95.len() / 2).copied().unwrap_or(0),
        announced.0.load(Ordering::Relaxed),
    );
    stop.cancel();
}
