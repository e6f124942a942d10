//! `rtp-load`: G.711 RTP through rtpengine, both ways, for N calls, to
//! measure what relaying costs rtpengine.
//!
//! ```text
//! rtp-load --calls 500 --secs 20 --ng 127.0.0.1:22222 [--watch-pid PID]
//! ```
//!
//! Per call it binds two loopback sockets (legs A and B), `offer`s leg A's
//! SDP and `answer`s leg B's, then sends 172-byte PCMU packets (20 ms,
//! consecutive seq/timestamp, one SSRC per leg) from each leg to the
//! rtpengine port that the other leg's SDP named, and counts what comes back.
//! One task paces every call: a tick every `20 / --slots` ms sends the
//! packets of one slot's calls and drains their sockets, so no per-socket
//! tasks or wake-ups. At the end it `delete`s every call it set up, even
//! after a failure, and prints one JSON line: packets sent and received, the
//! loss ratio, its own CPU seconds, the UDP drop counters of /proc/net/snmp,
//! and with `--watch-pid` the CPU seconds and RSS of that process (rtpengine)
//! over the sending window.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dialstack_tests::rtpengine::{g711_sdp, sdp_audio_addr, Bencode, NgClient};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

const PACKET_MS: u64 = 20;
const HEADER: usize = 12;
const PAYLOAD: usize = 160;
const PACKET: usize = HEADER + PAYLOAD;
/// USER_HZ: the unit of /proc/PID/stat's times, 100 on Linux's ABIs.
const CLOCK_TICKS: f64 = 100.0;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Bidirectional G.711 RTP load through rtpengine (loopback only)")]
struct Args {
    /// Concurrent calls.
    #[arg(long)]
    calls: usize,
    /// Seconds of RTP.
    #[arg(long)]
    secs: u64,
    /// rtpengine's ng control address (loopback).
    #[arg(long, default_value = "127.0.0.1:22222")]
    ng: SocketAddr,
    /// Ticks per 20 ms; each sends the packets of 1/slots of the calls.
    #[arg(long, default_value_t = 4)]
    slots: u64,
    /// Wait for stragglers after the last packet.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
    /// A process (rtpengine) whose CPU and RSS to report.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Prefix of call-ids, for running beside another load.
    #[arg(long, default_value = "rtpload")]
    call_prefix: String,
}

/// One leg: its socket, where it sends, and its RTP state.
struct Leg {
    socket: UdpSocket,
    dest: SocketAddr,
    packet: [u8; PACKET],
    seq: u16,
    ts: u32,
    sent: u64,
    received: u64,
}

impl Leg {
    fn new(socket: UdpSocket, dest: SocketAddr) -> Self {
        let mut packet = [0xffu8; PACKET]; // PCMU silence
        packet[0] = 0x80; // V=2
        packet[1] = 0x80; // marker on the first packet, PT 0
        packet[8..12].copy_from_slice(&fastrand::u32(..).to_be_bytes());
        Self {
            socket,
            dest,
            packet,
            seq: fastrand::u16(..),
            ts: fastrand::u32(..),
            sent: 0,
            received: 0,
        }
    }
}

/// Counters of the sending loop.
#[derive(Debug, Default)]
struct Counters {
    send_errors: u64,
    would_block: u64,
    unexpected_source: u64,
    malformed: u64,
    late_ticks: u64,
    max_late: Duration,
}

impl Counters {
    fn send(&mut self, leg: &mut Leg) {
        leg.packet[2..4].copy_from_slice(&leg.seq.to_be_bytes());
        leg.packet[4..8].copy_from_slice(&leg.ts.to_be_bytes());
        match leg.socket.send_to(&leg.packet, leg.dest) {
            Ok(_) => {
                leg.sent += 1;
                leg.packet[1] &= 0x7f;
                leg.seq = leg.seq.wrapping_add(1);
                leg.ts = leg.ts.wrapping_add(PAYLOAD as u32);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.would_block += 1,
            Err(_) => self.send_errors += 1,
        }
    }

    fn drain(&mut self, leg: &mut Leg, buf: &mut [u8]) {
        loop {
            match leg.socket.recv_from(buf) {
                Ok((n, from)) => {
                    if from != leg.dest {
                        self.unexpected_source += 1;
                    } else if n != PACKET || buf[0] >> 6 != 2 {
                        self.malformed += 1;
                    } else {
                        leg.received += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors surface here on Linux; nothing more to read.
                Err(_) => break,
            }
        }
    }
}

/// A call set up through rtpengine.
struct Call {
    id: String,
    from_tag: String,
    a: Leg,
    b: Leg,
}

/// Utime and stime of `pid` (or `self`) in seconds.
fn cpu_times(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line; 3 is the first after the name.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime / CLOCK_TICKS, stime / CLOCK_TICKS))
}

/// Utime + stime of `pid` (or `self`) in seconds.
fn cpu_secs(pid: &str) -> Option<f64> {
    cpu_times(pid).map(|(u, s)| u + s)
}

/// VmRSS of `pid` in kB.
fn rss_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `Udp:` counters of /proc/net/snmp.
fn udp_counters() -> HashMap<String, i64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    match rows.as_slice() {
        [names, values, ..] => names
            .split_whitespace()
            .skip(1)
            .zip(values.split_whitespace().skip(1))
            .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
            .collect(),
        _ => HashMap::new(),
    }
}

fn udp_delta(before: &HashMap<String, i64>, after: &HashMap<String, i64>) -> serde_json::Value {
    let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    json!({
        "in_datagrams": d("InDatagrams"),
        "out_datagrams": d("OutDatagrams"),
        "in_errors": d("InErrors"),
        "rcvbuf_errors": d("RcvbufErrors"),
        "sndbuf_errors": d("SndbufErrors"),
        "no_ports": d("NoPorts"),
    })
}

fn loopback_socket() -> anyhow::Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0").context("binding a leg socket")?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Offers and answers call `i`.
async fn set_up(ng: &mut NgClient, id: &str, i: usize) -> anyhow::Result<Call> {
    let (sa, sb) = (loopback_socket()?, loopback_socket()?);
    let (addr_a, addr_b) = (sa.local_addr()?, sb.local_addr()?);
    let from_tag = format!("a{i}");
    let to_tag = format!("b{i}");
    let to_b = ng
        .offer(id, &from_tag, &g711_sdp(addr_a, i as u64))
        .await
        .with_context(|| format!("offer of {id}"))?;
    let to_a = ng
        .answer(id, &from_tag, &to_tag, &g711_sdp(addr_b, i as u64))
        .await
        .with_context(|| format!("answer of {id}"))?;
    // B sends where the offer it received says; A where the answer says.
    let dest_b = sdp_audio_addr(&to_b).context("offer reply has no audio address")?;
    let dest_a = sdp_audio_addr(&to_a).context("answer reply has no audio address")?;
    for d in [dest_a, dest_b] {
        anyhow::ensure!(
            d.ip().is_loopback(),
            "rtpengine gave {d}, not a loopback address"
        );
    }
    Ok(Call {
        id: id.to_owned(),
        from_tag,
        a: Leg::new(sa, dest_a),
        b: Leg::new(sb, dest_b),
    })
}

/// RTP packets rtpengine reports relaying for one call, from the `delete`
/// reply's `totals`.
fn reported_rtp_packets(reply: &Bencode) -> Option<i64> {
    reply.get("totals")?.get("RTP")?.get("packets")?.as_int()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.ng.ip().is_loopback(),
        "--ng must be a loopback address"
    );
    anyhow::ensure!(
        args.calls > 0 && args.secs > 0,
        "--calls and --secs must be positive"
    );
    anyhow::ensure!(
        (1..=20).contains(&args.slots),
        "--slots must be within 1..=20"
    );
    let watch = args.watch_pid.map(|p| p.to_string());
    let watch_cpu = || watch.as_deref().and_then(cpu_secs);

    let mut ng = NgClient::connect(args.ng).await?;
    ng.ping().await.context("rtpengine does not answer ping")?;

    let setup_started = Instant::now();
    let (gen_cpu0, watch_cpu0) = (cpu_secs("self"), watch_cpu());
    let run = format!("{}-{:08x}", args.call_prefix, fastrand::u32(..));
    let mut calls = Vec::with_capacity(args.calls);
    let mut setup_error = None;
    for i in 0..args.calls {
        match set_up(&mut ng, &format!("{run}-{i}"), i).await {
            Ok(c) => calls.push(c),
            Err(e) => {
                setup_error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let (gen_cpu1, watch_cpu1) = (cpu_secs("self"), watch_cpu());
    let gen_times1 = cpu_times("self");

    let mut c = Counters::default();
    let mut send_elapsed = 0.0;
    let (mut gen_cpu2, mut watch_cpu2, mut rss) = (gen_cpu1, watch_cpu1, None);
    let mut gen_times2 = gen_times1;
    let udp0 = udp_counters();
    if setup_error.is_none() {
        let slots = args.slots as usize;
        let period = Duration::from_micros(PACKET_MS * 1000 / args.slots);
        let ticks = args.secs * (1000 / PACKET_MS) * args.slots;
        let mut buf = vec![0u8; 2048];
        let started = Instant::now();
        let mut interval = tokio::time::interval_at(started, period);
        // Late ticks catch up, so every call sends secs × 50 packets.
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        for tick in 0..ticks {
            let due = interval.tick().await;
            let late = due.elapsed();
            if late > Duration::from_millis(5) {
                c.late_ticks += 1;
            }
            c.max_late = c.max_late.max(late);
            let slot = (tick % args.slots) as usize;
            for call in calls.iter_mut().skip(slot).step_by(slots) {
                c.drain(&mut call.a, &mut buf);
                c.drain(&mut call.b, &mut buf);
                c.send(&mut call.a);
                c.send(&mut call.b);
            }
        }
        send_elapsed = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(args.drain_ms)).await;
        for call in &mut calls {
            c.drain(&mut call.a, &mut buf);
            c.drain(&mut call.b, &mut buf);
        }
        gen_cpu2 = cpu_secs("self");
        gen_times2 = cpu_times("self");
        watch_cpu2 = watch_cpu();
        rss = watch.as_deref().and_then(rss_kb);
    }
    let udp1 = udp_counters();

    let mut deleted = 0u64;
    let mut delete_errors = 0u64;
    let mut reported = 0i64;
    for call in &calls {
        match ng.delete(&call.id, &call.from_tag).await {
            Ok(reply) => {
                deleted += 1;
                reported += reported_rtp_packets(&reply).unwrap_or(0);
            }
            Err(_) => delete_errors += 1,
        }
    }

    let sent_a: u64 = calls.iter().map(|c| c.a.sent).sum();
    let sent_b: u64 = calls.iter().map(|c| c.b.sent).sum();
    let recv_a: u64 = calls.iter().map(|c| c.a.received).sum();
    let recv_b: u64 = calls.iter().map(|c| c.b.received).sum();
    let sent = sent_a + sent_b;
    let received = recv_a + recv_b;
    let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let watch_window = diff(watch_cpu1, watch_cpu2);
    // Normalised by the packets sent, not by the wall clock: when this
    // generator falls behind (a busy machine) the ticks catch up, the same
    // packets go through over a longer window and rtpengine does the same
    // work, so per wall-clock second it would look cheaper than it is.
    let call_secs = sent as f64 / (2.0 * 1000.0 / PACKET_MS as f64);
    let pace_ratio = send_elapsed / args.secs as f64;
    let (gen_user, gen_sys) = match (gen_times1, gen_times2) {
        (Some(a), Some(b)) => (Some(b.0 - a.0), Some(b.1 - a.1)),
        _ => (None, None),
    };
    let report = json!({
        "calls": calls.len(),
        "secs": args.secs,
        "slots": args.slots,
        "setup_secs": setup_secs,
        "send_elapsed_secs": send_elapsed,
        "packets_sent": sent,
        "packets_received": received,
        "sent_a_to_b": sent_a,
        "received_at_b": recv_b,
        "sent_b_to_a": sent_b,
        "received_at_a": recv_a,
        "loss_ratio": if sent > 0 { 1.0 - received as f64 / sent as f64 } else { 0.0 },
        "send_errors": c.send_errors,
        "send_would_block": c.would_block,
        "unexpected_source": c.unexpected_source,
        "malformed": c.malformed,
        "call_secs": call_secs,
        "pace_ratio": pace_ratio,
        // Within 5 % of real time: the load had the intended rate.
        "kept_pace": pace_ratio < 1.05,
        "late_ticks": c.late_ticks,
        "max_tick_late_ms": c.max_late.as_secs_f64() * 1000.0,
        "generator_cpu_secs": diff(gen_cpu1, gen_cpu2),
        "generator_user_secs": gen_user,
        "generator_sys_secs": gen_sys,
        "generator_setup_cpu_secs": diff(gen_cpu0, gen_cpu1),
        "udp": udp_delta(&udp0, &udp1),
        "watched": watch.as_ref().map(|pid| json!({
            "pid": pid,
            "cpu_secs": watch_window,
            "cpu_per_call_sec": watch_window.map(|w| if call_secs > 0.0 { w / call_secs } else { 0.0 }),
            "cpu_us_per_packet": watch_window.map(|w| if sent > 0 { w * 1e6 / sent as f64 } else { 0.0 }),
            "cpu_pct": watch_window.map(|w| if send_elapsed > 0.0 { 100.0 * w / send_elapsed } else { 0.0 }),
            "setup_cpu_secs": diff(watch_cpu0, watch_cpu1),
            "rss_kb": rss,
        })),
        "deleted": deleted,
        "delete_errors": delete_errors,
        "rtpengine_reported_rtp_packets": reported,
        "setup_error": setup_error,
    });
    println!("{report}");
    if let Some(e) = setup_error {
        anyhow::bail!("set-up failed after {} calls: {e}", calls.len());
    }
    Ok(())
}
