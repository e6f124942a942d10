//! Trunk health: an OPTIONS request to the trunk every
//! `DIALSTACK_SIP_KEEPALIVE_SECS` (RFC 3261 §11). Any response means the
//! trunk is up; two probes in a row without one mean it is down. While it is
//! down, `dialstack_trunk_up` is 0, readiness says so, and no new dial is
//! claimed: the dials wait in the commands channel (or go to another
//! replica) instead of failing one by one at Timer B.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::dialog::new_branch;
use super::transport::{Inbound, SipTransport};

/// Whether the trunk answers, shared by the keepalive, the dial consumer and
/// readiness.
#[derive(Clone)]
pub struct TrunkHealth {
    up: watch::Sender<bool>,
    gauge: prometheus::IntGauge,
}

impl TrunkHealth {
    /// Up until a probe says otherwise.
    pub fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.set(1);
        Self {
            up: watch::Sender::new(true),
            gauge,
        }
    }

    /// Whether the trunk answers now.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    fn set(&self, up: bool) {
        self.gauge.set(i64::from(up));
        self.up.send_if_modified(|v| {
            let changed = *v != up;
            *v = up;
            changed
        });
    }

    /// Waits until the trunk is up (at once when it is) or `stop`; `false`
    /// when stopped first.
    pub async fn wait_up(&self, stop: &CancellationToken) -> bool {
        let mut rx = self.up.subscribe();
        tokio::select! {
            r = rx.wait_for(|up| *up) => r.is_ok(),
            _ = stop.cancelled() => false,
        }
    }
}

/// Sends one OPTIONS from `local` (our advertised `ip:port`, never the
/// wildcard the socket is bound to) and waits for any response,
/// retransmitting at T1 doubling (Timer E) until `timeout`.
pub async fn probe(
    transport: &SipTransport,
    local: &str,
    trunk: SocketAddr,
    trunk_host: &str,
    t1: Duration,
    timeout: Duration,
) -> Option<u16> {
    let call_id = format!("keepalive-{:016x}", fastrand::u64(..));
    let branch = new_branch();
    let mut req = String::new();
    let _ = write!(
        req,
        "OPTIONS sip:{trunk_host} SIP/2.0\r\nVia: SIP/2.0/{} {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:dialstack@{local}>;tag={:08x}\r\nTo: <sip:{trunk_host}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n",
        transport.transport_name(trunk),
        fastrand::u32(..),
    );
    let mut rx = transport.register(&call_id);
    transport.send_for(&call_id, trunk, &req).await;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = t1;
    let mut next = tokio::time::Instant::now() + interval;
    let status = loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(Inbound::Msg { msg, .. }) if msg.top_branch() == Some(branch.as_str()) => {
                    if let Some(code) = msg.status() {
                        if code >= 200 {
                            break Some(code);
                        }
                    }
                }
                Some(_) => {}
                None => break None,
            },
            _ = tokio::time::sleep_until(next) => {
                if tokio::time::Instant::now() >= deadline {
                    break None;
                }
                transport.send_for(&call_id, trunk, &req).await;
                interval = (interval * 2).min(Duration::from_secs(4));
                next += interval;
            }
        }
    };
    transport.unregister(&call_id);
    status
}

/// Probes the trunk every `every` until `stop`, keeping `health` true.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    transport: Arc<SipTransport>,
    local: String,
    trunk: SocketAddr,
    trunk_host: String,
    t1: Duration,
    every: Duration,
    health: TrunkHealth,
    stop: CancellationToken,
) {
    let mut misses = 0u32;
    loop {
        let timeout = (t1 * 8).min(every).max(t1 * 2);
        match probe(&transport, &local, trunk, &trunk_host, t1, timeout).await {
            Some(status) => {
                if !health.is_up() {
                    tracing::info!(%trunk, status, "trunk answers again");
                }
                misses = 0;
                health.set(true);
            }
            None => {
                misses += 1;
                if misses >= 2 && health.is_up() {
                    tracing::warn!(%trunk, "trunk does not answer OPTIONS: not claiming new dials");
                    health.set(false);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Readiness: red while the trunk is down.
pub struct TrunkReady(pub TrunkHealth);

#[async_trait::async_trait]
impl dialstack_common::http::ReadyCheck for TrunkReady {
    fn name(&self) -> &str {
        "sip trunk"
    }

    async fn check(&self) -> Result<(), String> {
        if self.0.is_up() {
            Ok(())
        } else {
            Err("trunk does not answer OPTIONS; new dials wait in the commands channel".into())
        }
    }
}
