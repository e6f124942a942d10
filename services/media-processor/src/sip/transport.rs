//! The SIP socket: one UDP socket for every call, a supervised receive loop
//! that parses each datagram and hands it to its call, and the first line of
//! defence against the open network.
//!
//! What the transport checks before a call sees a message:
//! - it parses (bounded, total: [`Message::parse`]);
//! - it comes from an address this call sent a request to, or from the
//!   trunk's resolved address: anything else is dropped unanswered (no
//!   reflection towards forged sources);
//! - the call's queue has room (a flood from a trusted peer cannot grow
//!   memory or stall the loop: it is dropped and counted).
//!
//! The call then checks transactions (top Via branch + CSeq method) and
//! dialogs (tags, CSeq order). Every drop is counted in
//! `dialstack_sip_messages_dropped_total{reason}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::{response_to, Message};

/// Messages queued per call before further ones are dropped.
const CALL_QUEUE: usize = 64;
/// Largest request sent over UDP (RFC 3261 §18.1.1, MTU unknown).
pub const UDP_LIMIT: usize = 1_300;

/// What a call receives.
#[derive(Debug)]
pub enum Inbound {
    /// A message from one of the call's peers.
    Msg {
        /// The message.
        msg: Message,
        /// Who sent it (already checked against the call's peers).
        from: SocketAddr,
    },
    /// A datagram naming this call's Call-ID from one of its peers that did
    /// not parse: the peer is broken, the call should not wait for it.
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why a message was dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Did not parse.
    Malformed,
    /// From an address that is neither the trunk nor one of the call's peers.
    UnknownSource,
    /// For no live call (stray or late).
    NoCall,
    /// A response whose top Via branch or CSeq method matches no transaction.
    NoTransaction,
    /// An in-dialog request whose tags do not match the dialog.
    TagMismatch,
    /// An in-dialog request whose CSeq is not above the last one.
    CseqOrder,
    /// The call's queue was full.
    Overload,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 7] = [
        Self::Malformed,
        Self::UnknownSource,
        Self::NoCall,
        Self::NoTransaction,
        Self::TagMismatch,
        Self::CseqOrder,
        Self::Overload,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownSource => "unknown_source",
            Self::NoCall => "no_call",
            Self::NoTransaction => "no_transaction",
            Self::TagMismatch => "tag_mismatch",
            Self::CseqOrder => "cseq_order",
            Self::Overload => "overload",
        }
    }
}

/// The SIP edge's counters.
#[derive(Clone)]
pub struct SipMetrics {
    /// `dialstack_sip_messages_dropped_total{reason}`.
    pub dropped: prometheus::IntCounterVec,
    /// `dialstack_sip_receive_restarts_total`.
    pub restarts: prometheus::IntCounter,
    /// `dialstack_rtp_packets_dropped_total{reason}`: RTP refused by the
    /// stream gate (`source`, `ssrc`, `malformed`), added as calls end.
    pub rtp_dropped: prometheus::IntCounterVec,
    /// `dialstack_rtp_frames_skipped_total`: 20 ms frames a call's stream
    /// skipped (recorded as silence) because the process stalled for more
    /// than the stream can catch up; added as calls end.
    pub rtp_frames_skipped: prometheus::IntCounter,
}

impl SipMetrics {
    /// Fresh, unregistered counters (register them with a registry).
    pub fn new() -> Self {
        Self {
            dropped: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dialstack_sip_messages_dropped_total",
                    "SIP messages dropped at the edge, by reason",
                ),
                &["reason"],
            )
            .unwrap_or_else(|_| unreachable!("static metric definition")),
            restarts: prometheus::IntCounter::new(
                "dialstack_sip_receive_restarts_total",
                "times the SIP receive loop failed and was restarted",
            )
            .unwrap_or_else(|_| unreachable!("static metric definition")),
            rtp_dropped: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dialstack_rtp_packets_dropped_total",
                    "RTP packets refused: from the wrong source, of the wrong SSRC, or not RTP",
                ),
                &["reason"],
            )
            .unwrap_or_else(|_| unreachable!("static metric definition")),
            rtp_frames_skipped: prometheus::IntCounter::new(
                "dialstack_rtp_frames_skipped_total",
                "20 ms frames skipped because the media loop fell too far behind the clock",
            )
            .unwrap_or_else(|_| unreachable!("static metric definition")),
        }
    }

    /// Every label value at 0, so dashboards and alerts see the series
    /// before the first drop.
    pub fn with_zeros(self) -> Self {
        for r in DropReason::ALL {
            self.dropped.with_label_values(&[r.as_str()]);
        }
        for r in ["malformed", "source", "ssrc"] {
            self.rtp_dropped.with_label_values(&[r]);
        }
        self
    }

    /// Counts one drop.
    pub fn drop(&self, why: DropReason) {
        self.dropped.with_label_values(&[why.as_str()]).inc();
    }

    /// Drops counted so far for `why`.
    pub fn dropped(&self, why: DropReason) -> u64 {
        self.dropped.with_label_values(&[why.as_str()]).get()
    }
}

impl Default for SipMetrics {
    fn default() -> Self {
        Self::new()
    }
}

struct CallRoute {
    tx: mpsc::Sender<Inbound>,
    /// Addresses this call sent requests to: responses and in-dialog
    /// requests may come from them.
    peers: Vec<SocketAddr>,
}

/// Logs at most a few lines per window for one kind of noise.
struct LogLimit {
    window_start: Mutex<Instant>,
    count: AtomicU64,
}

impl LogLimit {
    fn new() -> Self {
        Self {
            window_start: Mutex::new(Instant::now()),
            count: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let mut start = self.window_start.lock().unwrap_or_else(|p| p.into_inner());
        if start.elapsed() > Duration::from_secs(10) {
            *start = Instant::now();
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < 5
    }
}

/// The shared SIP socket.
pub struct SipTransport {
    /// Itself, for the TCP connections it starts.
    me: Weak<SipTransport>,
    socket: UdpSocket,
    /// The trunk address reached over TCP (`;transport=tcp`), if any.
    tcp_trunk: Option<SocketAddr>,
    /// TCP connections by peer.
    links: Mutex<HashMap<SocketAddr, super::tcp::Link>>,
    /// Stops the TCP connections.
    stop: CancellationToken,
    /// Live calls by Call-ID, with the peers each may hear from.
    calls: Mutex<HashMap<String, CallRoute>>,
    /// The trunk's resolved addresses (IP and port): trusted for every call.
    trunk: Vec<SocketAddr>,
    metrics: SipMetrics,
    /// Whether the receive loop is running (readiness).
    up: AtomicBool,
    noise: LogLimit,
}

impl SipTransport {
    /// Binds the SIP socket; `trunk` lists the trunk's resolved addresses.
    pub async fn bind(
        addr: SocketAddr,
        trunk: Vec<SocketAddr>,
        metrics: SipMetrics,
    ) -> std::io::Result<Arc<Self>> {
        Self::bind_with(addr, trunk, None, metrics).await
    }

    /// As [`SipTransport::bind`], with the trunk reached over TCP when
    /// `tcp_trunk` is that address.
    pub async fn bind_with(
        addr: SocketAddr,
        trunk: Vec<SocketAddr>,
        tcp_trunk: Option<SocketAddr>,
        metrics: SipMetrics,
    ) -> std::io::Result<Arc<Self>> {
        let socket = UdpSocket::bind(addr).await?;
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            socket,
            tcp_trunk,
            links: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            calls: Mutex::new(HashMap::new()),
            trunk,
            metrics,
            up: AtomicBool::new(false),
            noise: LogLimit::new(),
        }))
    }

    /// Whether messages to `to` go over a stream (no retransmissions).
    pub fn reliable_to(&self, to: SocketAddr) -> bool {
        self.tcp_trunk == Some(to)
    }

    /// `UDP` or `TCP`: the transport of our Via and Contact for `to`.
    pub fn transport_name(&self, to: SocketAddr) -> &'static str {
        if self.reliable_to(to) {
            "TCP"
        } else {
            "UDP"
        }
    }

    /// Where the socket is bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The edge's counters.
    pub fn metrics(&self) -> &SipMetrics {
        &self.metrics
    }

    /// Whether the receive loop runs now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallRoute>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes messages with `call_id` to the returned receiver until
    /// [`SipTransport::unregister`].
    pub fn register(&self, call_id: &str) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        self.calls().insert(
            call_id.to_owned(),
            CallRoute {
                tx,
                peers: Vec::new(),
            },
        );
        rx
    }

    /// Stops routing messages for `call_id`.
    pub fn unregister(&self, call_id: &str) {
        self.calls().remove(call_id);
    }

    /// Number of calls registered.
    pub fn active(&self) -> usize {
        self.calls().len()
    }

    /// Sends a request of `call_id` to `to`, which may answer from now on.
    pub async fn send_for(&self, call_id: &str, to: SocketAddr, msg: &str) {
        if let Some(route) = self.calls().get_mut(call_id) {
            if !route.peers.contains(&to) && route.peers.len() < 8 {
                route.peers.push(to);
            }
        }
        self.send(to, msg).await;
    }

    /// Sends one message.
    pub async fn send(&self, to: SocketAddr, msg: &str) {
        if self.reliable_to(to) {
            if !self.link(to).send(msg.as_bytes()) {
                tracing::warn!(%to, "sip tcp queue full, message dropped");
            }
            return;
        }
        // RFC 3261 §18.1.1: a request over 1300 bytes goes over TCP. Only
        // to the trunk, and back to UDP while TCP to it fails (many trunks
        // take UDP only).
        if msg.len() > UDP_LIMIT && !msg.starts_with("SIP/2.0 ") && self.trunk.contains(&to) {
            let link = self.link(to);
            if !link.failed() {
                let over_tcp = msg.replacen("SIP/2.0/UDP", "SIP/2.0/TCP", 1);
                if link.send(over_tcp.as_bytes()) {
                    return;
                }
            }
            tracing::debug!(%to, len = msg.len(), "large request sent over udp: tcp to the trunk unavailable");
        }
        if let Err(e) = self.socket.send_to(msg.as_bytes(), to).await {
            tracing::warn!(error = %e, %to, "sip send failed");
        }
    }

    /// The TCP connection to `to`, opened on first use.
    fn link(&self, to: SocketAddr) -> super::tcp::Link {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .entry(to)
            .or_insert_with(|| super::tcp::open(to, self.me.clone(), self.stop.child_token()))
            .clone()
    }

    /// Receives until `shutdown`, restarting the receive loop if it ever
    /// fails (counted; readiness is red while it is down).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let me = self.clone();
        let stop = shutdown.clone();
        supervise(&self.up, &self.metrics.restarts, shutdown, move || {
            me.clone().receive(stop.clone())
        })
        .await;
        self.stop.cancel();
    }

    async fn receive(self: Arc<Self>, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP port unreachable surfaces here on some systems.
                        tracing::debug!(error = %e, "sip receive error");
                        continue;
                    }
                },
            };
            self.handle_datagram(&buf[..n], from).await;
        }
    }

    /// Handles one datagram (public for the fuzz and property tests).
    pub async fn handle_datagram(&self, raw: &[u8], from: SocketAddr) {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            return; // keep-alive (RFC 5626 CRLF)
        }
        match Message::parse(raw) {
            Ok(msg) => self.dispatch(msg, from).await,
            Err(e) => {
                self.metrics.drop(DropReason::Malformed);
                if self.noise.allow() {
                    tracing::warn!(%from, reason = e.reason, "malformed sip message dropped");
                }
                // A peer of a live call that sends it garbage is told to the
                // call; a stranger's garbage reaches no call.
                let Some(call_id) = sniff_call_id(raw) else {
                    return;
                };
                let calls = self.calls();
                if let Some(r) = calls.get(call_id) {
                    if r.peers.contains(&from) || self.trunk.contains(&from) {
                        let _ = r.tx.try_send(Inbound::Malformed { reason: e.reason });
                    }
                }
            }
        }
    }

    fn trusted(&self, from: SocketAddr) -> bool {
        self.trunk.contains(&from)
    }

    async fn dispatch(&self, msg: Message, from: SocketAddr) {
        let routed = {
            let calls = self.calls();
            calls.get(msg.call_id()).map(|r| {
                let known = r.peers.contains(&from) || self.trunk.contains(&from);
                (r.tx.clone(), known)
            })
        };
        match routed {
            Some((tx, true)) => {
                if tx.try_send(Inbound::Msg { msg, from }).is_err() {
                    self.metrics.drop(DropReason::Overload);
                }
            }
            Some((_, false)) => {
                self.metrics.drop(DropReason::UnknownSource);
                if self.noise.allow() {
                    tracing::warn!(%from, call_id = msg.call_id(), "sip message for a live call from an unknown source dropped");
                }
            }
            None if !self.trusted(from) => {
                // Nothing goes back to a source we never talked to.
                self.metrics.drop(DropReason::UnknownSource);
            }
            None => match msg.method() {
                Some("ACK") | None => self.metrics.drop(DropReason::NoCall),
                Some("OPTIONS") => {
                    let allow = "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n";
                    self.send(from, &response_to(&msg, 200, "OK", None, allow, ""))
                        .await;
                }
                Some("INVITE") => {
                    // Outbound only: incoming calls are not accepted.
                    self.send(from, &response_to(&msg, 603, "Decline", None, "", ""))
                        .await;
                }
                Some(_) => {
                    self.metrics.drop(DropReason::NoCall);
                    self.send(
                        from,
                        &response_to(&msg, 481, "Call/Transaction Does Not Exist", None, "", ""),
                    )
                    .await;
                }
            },
        }
    }
}

/// Runs the task `start` makes until it ends normally (shutdown); if it
/// panics, counts a restart in `restarts`, clears `up` for the moment, and
/// starts it again. `up` is set while a task runs.
pub async fn supervise<F, Fut>(
    up: &AtomicBool,
    restarts: &prometheus::IntCounter,
    shutdown: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        up.store(true, Ordering::SeqCst);
        let result = tokio::spawn(start()).await;
        up.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => return,
            Err(e) => {
                restarts.inc();
                tracing::error!(error = %e, "sip receive loop failed, restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// The Call-ID of a datagram that did not parse, when its head has one
/// (bounded: the first 4 KiB, the first 64 lines).
pub fn sniff_call_id(raw: &[u8]) -> Option<&str> {
    let head = &raw[..raw.len().min(4096)];
    let end = super::message::split_head(head).map_or(head.len(), |(h, _)| h);
    let text = std::str::from_utf8(&head[..end]).ok()?;
    text.lines().take(64).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
            .then(|| value.trim())
            .filter(|v| !v.is_empty())
    })
}

/// Readiness: red while the receive loop is down.
pub struct SipReady(pub Arc<SipTransport>);

#[async_trait::async_trait]
impl dialstack_common::http::ReadyCheck for SipReady {
    fn name(&self) -> &str {
        "sip edge"
    }

    async fn check(&self) -> Result<(), String> {
        if self.0.is_up() {
            Ok(())
        } else {
            Err("receive loop not running".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_receive_loop_is_counted_and_restarted() {
        let up = Arc::new(AtomicBool::new(false));
        let restarts = prometheus::IntCounter::new("r", "r").unwrap();
        let stop = CancellationToken::new();
        let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (s2, stop2, up2) = (starts.clone(), stop.clone(), up.clone());
        let supervised = {
            let restarts = restarts.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                supervise(&up2, &restarts, stop, move || {
                    let n = s2.fetch_add(1, Ordering::SeqCst);
                    let stop = stop2.clone();
                    async move {
                        if n == 0 {
                            panic!("first run fails");
                        }
                        stop.cancelled().await;
                    }
                })
                .await
            })
        };
        while starts.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(restarts.get(), 1);
        assert!(up.load(Ordering::SeqCst), "running again");
        stop.cancel();
        supervised.await.unwrap();
        assert!(!up.load(Ordering::SeqCst), "not running after shutdown");
        assert_eq!(restarts.get(), 1);
    }
}
