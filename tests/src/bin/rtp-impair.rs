//! `rtp-impair`: a seeded UDP impairment relay, for jitter and loss
//! benchmarks on a kernel without netem.
//!
//! ```text
//! rtp-impair --listen 127.0.0.1:PORT_A --forward 127.0.0.1:PORT_B --seed 7 \
//!     --delay-ms 20 --jitter-ms 15 --reorder 0.01 --loss 0.005 \
//!     --burst-loss 0.002 --burst-len 3 [--both] [--duration-secs 60] [--stats-file F]
//! ```
//!
//! Datagrams arriving on `--listen` are sent to `--forward` from a second
//! socket (`--forward-bind`, an ephemeral loopback port by default); datagrams
//! arriving on that second socket go back to the latest peer seen on
//! `--listen`. The A→B direction is impaired (both with `--both`); the other
//! is relayed as it comes. Payloads are opaque bytes of any size.
//!
//! Each packet's fate comes from an [`Impairer`] seeded with `--seed`, one
//! per direction, so the same arrival order gives the same drops, delays and
//! reorders. Delayed packets wait in a heap keyed on send time, at most
//! `--max-pending` of them. On SIGINT, SIGTERM or after `--duration-secs` it
//! prints one JSON line of statistics (also written to `--stats-file`).
//!
//! Note that jitter alone reorders packets, as netem's does: at 20 ms spacing
//! and 15 ms jitter the difference of two neighbours' delays has σ ≈ 21 ms.
//! `--in-order` holds each packet until its predecessors have gone, so only
//! `--reorder` reorders. `out_of_order` counts what was actually sent out of
//! arrival order; `reordered` counts the packets `--reorder` picked.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "A seeded UDP impairment relay (loopback only)")]
struct Args {
    /// Where peers send (loopback).
    #[arg(long)]
    listen: SocketAddr,
    /// Where their datagrams go (loopback).
    #[arg(long)]
    forward: SocketAddr,
    /// The socket that sends to `--forward` and receives its replies.
    #[arg(long, default_value = "127.0.0.1:0")]
    forward_bind: SocketAddr,
    /// Seed of every random decision.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean added delay.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Standard deviation of the added delay (normal, clipped at zero).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Probability that a packet is held back 1–3 packet intervals more.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Probability of an independent drop.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability that a burst of drops starts at a packet.
    #[arg(long, default_value_t = 0.0)]
    burst_loss: f64,
    /// Packets dropped by one burst.
    #[arg(long, default_value_t = 3)]
    burst_len: u32,
    /// The packet interval that `--reorder` holds packets back by.
    #[arg(long, default_value_t = 20.0)]
    interval_ms: f64,
    /// Impair B→A too.
    #[arg(long)]
    both: bool,
    /// Never send a packet before one that arrived earlier in its direction.
    #[arg(long)]
    in_order: bool,
    /// Most packets waiting; more are dropped and counted.
    #[arg(long, default_value_t = 10_000)]
    max_pending: usize,
    /// Stop by itself after this long.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Also write the final statistics here.
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

/// What happens to the packets of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Impairment {
    delay_ms: f64,
    jitter_ms: f64,
    reorder: f64,
    loss: f64,
    burst_loss: f64,
    burst_len: u32,
    interval_ms: f64,
}

impl Impairment {
    const NONE: Self = Self {
        delay_ms: 0.0,
        jitter_ms: 0.0,
        reorder: 0.0,
        loss: 0.0,
        burst_loss: 0.0,
        burst_len: 0,
        interval_ms: 20.0,
    };

    fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("--reorder", self.reorder),
            ("--loss", self.loss),
            ("--burst-loss", self.burst_loss),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability in [0, 1], got {p}"));
            }
        }
        for (name, ms) in [
            ("--delay-ms", self.delay_ms),
            ("--jitter-ms", self.jitter_ms),
            ("--interval-ms", self.interval_ms),
        ] {
            if !(0.0..=60_000.0).contains(&ms) {
                return Err(format!("{name} must be within [0, 60000], got {ms}"));
            }
        }
        if self.burst_loss > 0.0 && self.burst_len == 0 {
            return Err("--burst-len must be at least 1 with --burst-loss".into());
        }
        Ok(())
    }
}

/// The fate of one packet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    DropLoss,
    DropBurst,
    Send { delay: Duration, reordered: bool },
}

/// Decides packet fates from a seeded generator; the n-th call gives the
/// same verdict for the same seed and configuration.
struct Impairer {
    cfg: Impairment,
    rng: fastrand::Rng,
    /// Packets the current burst still drops.
    burst_left: u32,
}

impl Impairer {
    fn new(cfg: Impairment, seed: u64) -> Self {
        Self {
            cfg,
            rng: fastrand::Rng::with_seed(seed),
            burst_left: 0,
        }
    }

    fn judge(&mut self) -> Verdict {
        let c = self.cfg;
        if self.burst_left > 0 {
            self.burst_left -= 1;
            return Verdict::DropBurst;
        }
        if c.burst_loss > 0.0 && self.rng.f64() < c.burst_loss {
            self.burst_left = c.burst_len.saturating_sub(1);
            return Verdict::DropBurst;
        }
        if c.loss > 0.0 && self.rng.f64() < c.loss {
            return Verdict::DropLoss;
        }
        let mut ms = c.delay_ms;
        if c.jitter_ms > 0.0 {
            ms = (ms + c.jitter_ms * self.normal()).max(0.0);
        }
        let reordered = c.reorder > 0.0 && self.rng.f64() < c.reorder;
        if reordered {
            ms += c.interval_ms * f64::from(self.rng.u32(1..=3));
        }
        Verdict::Send {
            delay: Duration::from_secs_f64(ms / 1000.0),
            reordered,
        }
    }

    /// A standard normal sample (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.rng.f64(); // (0, 1]: ln is finite
        let u2 = self.rng.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Added delays in 0.1 ms buckets up to 10 s; longer ones land in the last.
struct DelayHistogram {
    buckets: Vec<u64>,
    count: u64,
    sum_ms: f64,
    max_ms: f64,
}

impl DelayHistogram {
    const BUCKET_MS: f64 = 0.1;
    const BUCKETS: usize = 100_000;

    fn new() -> Self {
        Self {
            buckets: vec![0; Self::BUCKETS],
            count: 0,
            sum_ms: 0.0,
            max_ms: 0.0,
        }
    }

    fn record(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        // Truncation is the bucketing.
        let i = ((ms / Self::BUCKET_MS) as usize).min(Self::BUCKETS - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms += ms;
        self.max_ms = self.max_ms.max(ms);
    }

    /// The upper edge of the bucket holding the `q` quantile, at most the
    /// largest delay seen (so no delay reads as zero, not one bucket).
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return ((i + 1) as f64 * Self::BUCKET_MS).min(self.max_ms);
            }
        }
        self.max_ms
    }
}

/// Counters of one direction.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct DirStats {
    received: u64,
    forwarded: u64,
    bytes_forwarded: u64,
    dropped_loss: u64,
    dropped_burst: u64,
    /// Dropped because `--max-pending` packets were waiting.
    dropped_overflow: u64,
    /// B→A datagrams before any peer had sent to `--listen`.
    dropped_no_peer: u64,
    send_errors: u64,
    /// Picked by `--reorder`.
    reordered: u64,
    /// Sent after a packet that arrived later.
    out_of_order: u64,
    /// Still waiting when the relay stopped (not sent).
    pending_at_exit: u64,
    delay_mean_ms: f64,
    delay_p50_ms: f64,
    delay_p95_ms: f64,
    delay_max_ms: f64,
}

/// One direction's impairer, clock and counters.
struct Direction {
    impairer: Impairer,
    impaired: bool,
    in_order: bool,
    stats: DirStats,
    delays: DelayHistogram,
    /// Arrival number of the next packet.
    next_arrival: u64,
    /// Highest arrival number sent so far, plus one.
    sent_watermark: u64,
    /// Send time of the latest packet scheduled, for `--in-order`.
    last_at: Option<Instant>,
}

impl Direction {
    fn new(cfg: Impairment, seed: u64, impaired: bool, in_order: bool) -> Self {
        Self {
            impairer: Impairer::new(cfg, seed),
            impaired,
            in_order,
            stats: DirStats::default(),
            delays: DelayHistogram::new(),
            next_arrival: 0,
            sent_watermark: 0,
            last_at: None,
        }
    }

    fn finish(&mut self) -> DirStats {
        let mut s = self.stats.clone();
        let h = &self.delays;
        if h.count > 0 {
            s.delay_mean_ms = h.sum_ms / h.count as f64;
            s.delay_p50_ms = h.quantile_ms(0.50);
            s.delay_p95_ms = h.quantile_ms(0.95);
            s.delay_max_ms = h.max_ms;
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    AToB,
    BToA,
}

/// A datagram waiting for its send time.
struct Pending {
    at: Instant,
    /// Insertion number: equal send times go out in arrival order.
    order: u64,
    dir: Dir,
    arrival: u64,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// The final statistics.
#[derive(Debug, serde::Serialize)]
struct Stats {
    seed: u64,
    elapsed_secs: f64,
    a_to_b: DirStats,
    b_to_a: DirStats,
}

/// A bound relay.
struct Relay {
    listen: UdpSocket,
    upstream: UdpSocket,
    forward: SocketAddr,
    seed: u64,
    max_pending: usize,
    a_to_b: Direction,
    b_to_a: Direction,
}

impl Relay {
    async fn bind(args: &Args) -> anyhow::Result<Self> {
        for (name, addr) in [
            ("--listen", args.listen),
            ("--forward", args.forward),
            ("--forward-bind", args.forward_bind),
        ] {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "{name} {addr} is not a loopback address"
            );
        }
        let cfg = Impairment {
            delay_ms: args.delay_ms,
            jitter_ms: args.jitter_ms,
            reorder: args.reorder,
            loss: args.loss,
            burst_loss: args.burst_loss,
            burst_len: args.burst_len,
            interval_ms: args.interval_ms,
        };
        cfg.validate().map_err(anyhow::Error::msg)?;
        let back = if args.both { cfg } else { Impairment::NONE };
        Ok(Self {
            listen: UdpSocket::bind(args.listen).await?,
            upstream: UdpSocket::bind(args.forward_bind).await?,
            forward: args.forward,
            seed: args.seed,
            max_pending: args.max_pending,
            a_to_b: Direction::new(cfg, args.seed, true, args.in_order),
            // A different stream, so each direction's fates depend only on
            // its own arrivals.
            b_to_a: Direction::new(
                back,
                args.seed ^ 0x9e37_79b9_7f4a_7c15,
                args.both,
                args.in_order,
            ),
        })
    }

    /// Relays until `stop` completes.
    async fn run(mut self, stop: impl std::future::Future<Output = ()>) -> Stats {
        let started = Instant::now();
        let mut heap: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
        let mut order = 0u64;
        let mut peer: Option<SocketAddr> = None;
        let mut buf_a = vec![0u8; 65536];
        let mut buf_b = vec![0u8; 65536];
        tokio::pin!(stop);
        loop {
            let next = heap.peek().map(|Reverse(p)| p.at);
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = sleep_until_opt(next) => {
                    self.flush_due(&mut heap, peer).await;
                }
                r = self.listen.recv_from(&mut buf_a) => match r {
                    Ok((n, from)) => {
                        peer = Some(from);
                        self.arrive(Dir::AToB, &buf_a[..n], &mut heap, &mut order, peer).await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                },
                r = self.upstream.recv_from(&mut buf_b) => match r {
                    Ok((n, _)) => {
                        self.arrive(Dir::BToA, &buf_b[..n], &mut heap, &mut order, peer).await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                },
            }
        }
        for Reverse(p) in heap {
            self.dir(p.dir).stats.pending_at_exit += 1;
        }
        Stats {
            seed: self.seed,
            elapsed_secs: started.elapsed().as_secs_f64(),
            a_to_b: self.a_to_b.finish(),
            b_to_a: self.b_to_a.finish(),
        }
    }

    fn dir(&mut self, d: Dir) -> &mut Direction {
        match d {
            Dir::AToB => &mut self.a_to_b,
            Dir::BToA => &mut self.b_to_a,
        }
    }

    async fn arrive(
        &mut self,
        d: Dir,
        data: &[u8],
        heap: &mut BinaryHeap<Reverse<Pending>>,
        order: &mut u64,
        peer: Option<SocketAddr>,
    ) {
        let now = Instant::now();
        let max_pending = self.max_pending;
        let dir = self.dir(d);
        dir.stats.received += 1;
        let arrival = dir.next_arrival;
        dir.next_arrival += 1;
        let verdict = if dir.impaired {
            dir.impairer.judge()
        } else {
            Verdict::Send {
                delay: Duration::ZERO,
                reordered: false,
            }
        };
        let (delay, reordered) = match verdict {
            Verdict::DropLoss => {
                dir.stats.dropped_loss += 1;
                return;
            }
            Verdict::DropBurst => {
                dir.stats.dropped_burst += 1;
                return;
            }
            Verdict::Send { delay, reordered } => (delay, reordered),
        };
        let mut at = now + delay;
        if dir.in_order && !reordered {
            if let Some(last) = dir.last_at {
                at = at.max(last);
            }
        }
        if !reordered {
            dir.last_at = Some(at);
        }
        if reordered {
            dir.stats.reordered += 1;
        }
        dir.delays.record(at - now);

        if at <= now {
            // Due now: send what was due before it first, then it.
            self.flush_due(heap, peer).await;
            self.send(d, arrival, data, peer).await;
            return;
        }
        if heap.len() >= max_pending {
            self.dir(d).stats.dropped_overflow += 1;
            return;
        }
        *order += 1;
        heap.push(Reverse(Pending {
            at,
            order: *order,
            dir: d,
            arrival,
            data: data.to_vec(),
        }));
    }

    async fn flush_due(
        &mut self,
        heap: &mut BinaryHeap<Reverse<Pending>>,
        peer: Option<SocketAddr>,
    ) {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(p)| p.at <= now) {
            let Some(Reverse(p)) = heap.pop() else { break };
            self.send(p.dir, p.arrival, &p.data, peer).await;
        }
    }

    async fn send(&mut self, d: Dir, arrival: u64, data: &[u8], peer: Option<SocketAddr>) {
        let (socket, to) = match d {
            Dir::AToB => (&self.upstream, Some(self.forward)),
            Dir::BToA => (&self.listen, peer),
        };
        let result = match to {
            Some(to) => Some(socket.send_to(data, to).await),
            None => None,
        };
        let dir = self.dir(d);
        if arrival < dir.sent_watermark {
            dir.stats.out_of_order += 1;
        }
        dir.sent_watermark = dir.sent_watermark.max(arrival + 1);
        match result {
            None => dir.stats.dropped_no_peer += 1,
            Some(Err(_)) => dir.stats.send_errors += 1,
            Some(Ok(_)) => {
                dir.stats.forwarded += 1;
                dir.stats.bytes_forwarded += data.len() as u64;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Completes on SIGINT, SIGTERM or after `duration`.
async fn stop_signal(duration: Option<Duration>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
        () = deadline => {}
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let duration = match args.duration_secs {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            eprintln!("rtp-impair: --duration-secs must be positive");
            return std::process::ExitCode::from(2);
        }
        s => s.map(Duration::from_secs_f64),
    };
    let relay = match Relay::bind(&args).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rtp-impair: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let addr = |s: &UdpSocket| s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    eprintln!(
        "{}",
        serde_json::json!({
            "event": "listening",
            "listen": addr(&relay.listen),
            "forward_from": addr(&relay.upstream),
            "forward": relay.forward.to_string(),
        })
    );
    let stats = relay.run(stop_signal(duration)).await;
    let line = serde_json::to_string(&stats).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    println!("{line}");
    if let Some(path) = &args.stats_file {
        if let Err(e) = std::fs::write(path, format!("{line}\n")) {
            eprintln!("rtp-impair: cannot write {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Impairment {
        Impairment {
            delay_ms: 20.0,
            jitter_ms: 15.0,
            reorder: 0.01,
            loss: 0.005,
            burst_loss: 0.002,
            burst_len: 3,
            interval_ms: 20.0,
        }
    }

    fn verdicts(cfg: Impairment, seed: u64, n: usize) -> Vec<Verdict> {
        let mut imp = Impairer::new(cfg, seed);
        (0..n).map(|_| imp.judge()).collect()
    }

    #[test]
    fn same_seed_same_decisions() {
        assert_eq!(verdicts(cfg(), 42, 10_000), verdicts(cfg(), 42, 10_000));
        assert_ne!(verdicts(cfg(), 42, 10_000), verdicts(cfg(), 43, 10_000));
    }

    #[test]
    fn independent_loss_ratio_is_within_tolerance() {
        let c = Impairment {
            loss: 0.05,
            ..Impairment::NONE
        };
        let n = 100_000;
        let lost = verdicts(c, 1, n)
            .iter()
            .filter(|v| **v == Verdict::DropLoss)
            .count();
        let ratio = lost as f64 / n as f64;
        // σ ≈ 0.0007: the bound is over four σ.
        assert!((ratio - 0.05).abs() < 0.003, "loss ratio {ratio}");
    }

    #[test]
    fn bursts_drop_runs_of_burst_len() {
        let c = Impairment {
            burst_loss: 0.01,
            burst_len: 3,
            ..Impairment::NONE
        };
        let n = 100_000;
        let v = verdicts(c, 9, n);
        let mut runs = Vec::new();
        let mut run = 0;
        for x in &v {
            if *x == Verdict::DropBurst {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        assert!(
            runs.iter().all(|r| r % 3 == 0),
            "a burst run not a multiple of 3"
        );
        let dropped: usize = runs.iter().sum();
        // Bursts start at a rate b among packets outside one: 3b / (1 + 2b).
        let expected = 0.03 / 1.02;
        let ratio = dropped as f64 / n as f64;
        assert!(
            (ratio - expected).abs() < 0.005,
            "burst ratio {ratio}, expected {expected}"
        );
    }

    #[test]
    fn delay_distribution_has_the_configured_mean_and_sigma() {
        let c = Impairment {
            delay_ms: 100.0,
            jitter_ms: 10.0,
            ..Impairment::NONE
        };
        let d: Vec<f64> = verdicts(c, 3, 100_000)
            .iter()
            .map(|v| match v {
                Verdict::Send { delay, .. } => delay.as_secs_f64() * 1000.0,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let sigma = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        assert!((mean - 100.0).abs() < 0.2, "mean {mean}");
        assert!((sigma - 10.0).abs() < 0.2, "sigma {sigma}");

        // Close to zero the normal is clipped, never negative.
        let clipped = verdicts(cfg(), 5, 100_000);
        assert!(clipped.iter().all(|v| match v {
            Verdict::Send { delay, .. } => *delay >= Duration::ZERO,
            _ => true,
        }));
    }

    /// Send order of packets arriving every 20 ms, by the relay's rule.
    fn delivery_order(c: Impairment, seed: u64, n: u64) -> Vec<u64> {
        let mut imp = Impairer::new(c, seed);
        let mut sent: Vec<(Duration, u64)> = (0..n)
            .filter_map(|i| match imp.judge() {
                Verdict::Send { delay, .. } => Some((Duration::from_millis(20 * i) + delay, i)),
                _ => None,
            })
            .collect();
        sent.sort();
        sent.into_iter().map(|(_, i)| i).collect()
    }

    #[test]
    fn reorder_delivers_out_of_order() {
        let fixed = Impairment {
            delay_ms: 20.0,
            ..Impairment::NONE
        };
        let in_order = delivery_order(fixed, 1, 10_000);
        assert!(in_order.windows(2).all(|w| w[0] < w[1]));

        let c = Impairment {
            reorder: 0.05,
            ..fixed
        };
        let order = delivery_order(c, 1, 10_000);
        let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
        // About 500 packets held back, each overtaken by 1-3 successors.
        assert!((300..700).contains(&inversions), "{inversions} inversions");
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = DelayHistogram::new();
        for ms in 1..=100 {
            h.record(Duration::from_micros(ms * 1000 + 50));
        }
        assert!((h.quantile_ms(0.5) - 50.1).abs() < 1e-9);
        assert!((h.quantile_ms(0.95) - 95.1).abs() < 1e-9);
        let mut zero = DelayHistogram::new();
        zero.record(Duration::ZERO);
        assert_eq!(zero.quantile_ms(0.5), 0.0);
        h.record(Duration::from_secs(3600));
        assert!((h.max_ms - 3_600_000.0).abs() < 1e-6);
    }

    #[test]
    fn validation_refuses_nonsense() {
        assert!(cfg().validate().is_ok());
        for bad in [
            Impairment { loss: 1.5, ..cfg() },
            Impairment {
                reorder: -0.1,
                ..cfg()
            },
            Impairment {
                delay_ms: f64::NAN,
                ..cfg()
            },
            Impairment {
                jitter_ms: -1.0,
                ..cfg()
            },
            Impairment {
                burst_len: 0,
                ..cfg()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    fn args(listen: SocketAddr, forward: SocketAddr, extra: &[&str]) -> Args {
        let mut v = vec![
            "rtp-impair".to_owned(),
            "--listen".into(),
            listen.to_string(),
            "--forward".into(),
            forward.to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        Args::parse_from(v)
    }

    #[tokio::test]
    async fn relays_both_ways_with_any_payload() {
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind b");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind a");
        let relay = Relay::bind(&args(
            "127.0.0.1:0".parse().expect("addr"),
            b.local_addr().expect("addr"),
            &["--delay-ms", "5", "--jitter-ms", "2"],
        ))
        .await
        .expect("relay binds");
        let listen = relay.listen.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async {
            let _ = stop_rx.await;
        }));

        let mut payloads: Vec<Vec<u8>> = vec![vec![], vec![0xff; 65_507]];
        payloads.extend((0..100u8).map(|i| vec![i; 172]));
        for p in &payloads {
            a.send_to(p, listen).await.expect("send");
        }
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        let mut from = None;
        while got.len() < payloads.len() {
            let (n, f) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
                .await
                .expect("relayed in time")
                .expect("recv");
            got.push(buf[..n].to_vec());
            from = Some(f);
        }
        got.sort();
        let mut want = payloads.clone();
        want.sort();
        assert_eq!(got, want);

        // Replies to the relay's forwarding socket reach the latest peer.
        let relay_out = from.expect("a sender");
        b.send_to(b"reply", relay_out).await.expect("reply");
        let (n, f) = tokio::time::timeout(Duration::from_secs(5), a.recv_from(&mut buf))
            .await
            .expect("reply in time")
            .expect("recv");
        assert_eq!(&buf[..n], b"reply");
        assert_eq!(f, listen);

        let _ = stop_tx.send(());
        let stats = task.await.expect("relay task");
        assert_eq!(stats.a_to_b.received, payloads.len() as u64);
        assert_eq!(stats.a_to_b.forwarded, payloads.len() as u64);
        assert_eq!(stats.b_to_a.forwarded, 1);
        assert!(stats.a_to_b.delay_p50_ms > 0.0);
    }

    #[tokio::test]
    async fn refuses_non_loopback_targets() {
        let r = Relay::bind(&args(
            "127.0.0.1:0".parse().expect("addr"),
            "192.0.2.1:4000".parse().expect("addr"),
            &[],
        ))
        .await;
        assert!(r.is_err());
    }
}
