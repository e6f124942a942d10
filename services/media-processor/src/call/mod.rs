//! One outbound call, from INVITE to BYE, as a user agent client (RFC 3261).
//!
//! - [`invite`]: the INVITE client transaction: Timer A/B, provisional
//!   responses, Digest challenges, CANCEL at the ring timeout (or on a
//!   hang-up command or shutdown), a `200` that crosses our CANCEL
//! - [`session`]: the answered call: ACK along the route set, RTP, requests
//!   from the peer (BYE, re-INVITE/UPDATE with hold), our BYE
//!
//! A call moves through [`CallPhase`]s; [`CallPhase::can_become`] is the one
//! table of legal moves.

pub mod bridge;
pub mod invite;
pub mod ivr;
pub mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_contract::{DialCommand, FailReason, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::rtp::PortPool;
use crate::sip::digest::Credentials;
use crate::sip::sdp::LocalSdp;
use crate::sip::{Dialog, SipTransport};

/// Where and how calls are placed.
#[derive(Clone)]
pub struct CallContext {
    /// SIP socket.
    pub transport: Arc<SipTransport>,
    /// The trunk's address.
    pub trunk: SocketAddr,
    /// The trunk's `host:port` for Request-URIs.
    pub trunk_host: String,
    /// Our address in SDP, Via and Contact.
    pub media_ip: IpAddr,
    /// RTP ports.
    pub ports: Arc<PortPool>,
    /// RFC 3261 T1 (500 ms by default).
    pub t1: Duration,
    /// Setup latency histogram (INVITE to answer).
    pub setup_seconds: prometheus::Histogram,
    /// Digest credentials for the trunk, when it challenges.
    pub credentials: Option<Credentials>,
    /// How long an answered call may go on after shutdown begins.
    pub drain_talk: Duration,
    /// The media loop's settings, metrics and recorder.
    pub media: Arc<crate::rtp::stream::MediaContext>,
    /// Agents for bridged calls (`None`: dial commands with a bridge play
    /// the tone, as without one).
    pub bridge: Option<Arc<bridge::BridgeContext>>,
    /// Speech engines and prompts for IVR flows and machine detection
    /// (`None`: commands with a flow play the tone).
    pub ivr: Option<Arc<ivr::IvrContext>>,
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallPhase {
    /// INVITE sent, no response yet.
    Calling,
    /// A provisional response arrived (ringing, early media).
    Proceeding,
    /// We sent CANCEL and wait for the INVITE's final response.
    Canceling,
    /// 2xx received and acknowledged: media flows.
    Confirmed,
    /// We sent BYE and wait for its response.
    Terminating,
    /// Over.
    Terminated,
}

impl CallPhase {
    /// Every phase.
    pub const ALL: [CallPhase; 6] = [
        Self::Calling,
        Self::Proceeding,
        Self::Canceling,
        Self::Confirmed,
        Self::Terminating,
        Self::Terminated,
    ];

    /// The legal moves. A `200` that crosses our CANCEL confirms the
    /// dialog (to BYE it): Canceling → Confirmed.
    pub fn can_become(self, next: Self) -> bool {
        use CallPhase::*;
        matches!(
            (self, next),
            (Calling, Proceeding | Canceling | Confirmed | Terminated)
                | (Proceeding, Canceling | Confirmed | Terminated)
                | (Canceling, Confirmed | Terminated)
                | (Confirmed, Terminating | Terminated)
                | (Terminating, Terminated)
        )
    }
}

/// A call's phase with its moves checked.
#[derive(Debug)]
pub struct Phase {
    now: CallPhase,
    call_id: String,
}

impl Phase {
    fn new(call_id: &str) -> Self {
        Self {
            now: CallPhase::Calling,
            call_id: call_id.to_owned(),
        }
    }

    /// The phase now.
    pub fn get(&self) -> CallPhase {
        self.now
    }

    /// Moves to `next`; an illegal move is logged and refused (the call
    /// logic never relies on one).
    pub fn go(&mut self, next: CallPhase) {
        if self.now == next {
            return;
        }
        if self.now.can_become(next) {
            self.now = next;
        } else {
            tracing::error!(call_id = %self.call_id, from = ?self.now, to = ?next, "illegal call phase move refused");
        }
    }
}

/// Something that happened to a call, reported as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// INVITE sent.
    Dialing,
    /// 180 or 183 received.
    Ringing,
    /// 200 received and acknowledged; ring time in ms.
    Answered {
        /// From INVITE to answer.
        ring_ms: i64,
    },
    /// The answered callee is connected to an agent.
    Bridged {
        /// The agent.
        agent_id: String,
        /// The callee's wait from answer (ms).
        wait_ms: i64,
        /// From the agent's INVITE to its answer (ms).
        agent_ring_ms: i64,
    },
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Outcome.
    pub outcome: Outcome,
    /// Why, for `failed` and the like.
    pub reason: Option<FailReason>,
    /// Final SIP status of the INVITE, if any.
    pub sip_status: Option<u16>,
    /// INVITE to answer or final response.
    pub ring_ms: i64,
    /// Answer to hang-up.
    pub talk_ms: i64,
    /// RTP packets sent.
    pub rtp_sent: u64,
    /// RTP packets accepted.
    pub rtp_received: u64,
    /// RTP packets dropped (wrong source or SSRC, not RTP).
    pub rtp_dropped: u64,
    /// Everything the media loop counted (answered calls).
    pub media: Option<crate::rtp::stream::StreamReport>,
    /// The agent leg of a bridged call (boxed: most calls have none).
    pub agent: Option<Box<dialstack_contract::AgentLeg>>,
    /// What the IVR flow did.
    pub ivr: Option<Box<dialstack_contract::IvrResult>>,
    /// What machine detection decided.
    pub amd: Option<Box<dialstack_contract::AmdResult>>,
}

impl Report {
    fn unanswered(
        outcome: Outcome,
        reason: Option<FailReason>,
        sip_status: Option<u16>,
        started: Instant,
    ) -> Self {
        Self {
            outcome,
            reason,
            sip_status,
            ring_ms: started.elapsed().as_millis() as i64,
            talk_ms: 0,
            rtp_sent: 0,
            rtp_received: 0,
            rtp_dropped: 0,
            media: None,
            agent: None,
            ivr: None,
            amd: None,
        }
    }

    /// Quality of the incoming audio (answered calls that received audio).
    pub fn quality(&self) -> Option<&dialstack_contract::Quality> {
        self.media.as_ref()?.quality.as_ref()
    }
}

/// The outcome a final non-2xx status means.
pub fn outcome_for_status(code: u16) -> (Outcome, Option<FailReason>) {
    match code {
        486 | 600 => (Outcome::Busy, None),
        408 | 480 => (Outcome::NoAnswer, None),
        487 => (Outcome::Canceled, None),
        300..=399 => (Outcome::Failed, Some(FailReason::RedirectUnsupported)),
        401 | 407 => (Outcome::Failed, Some(FailReason::TrunkAuth)),
        400..=499 | 603 | 604 | 606 => (Outcome::Rejected, None),
        _ => (Outcome::Failed, Some(FailReason::TrunkError)),
    }
}

/// Why we are canceling a call that has not been answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    /// It rang for the ring timeout: `no_answer`.
    RingTimeout,
    /// A hang-up command or shutdown: `canceled`.
    Stop,
    /// The peer sent something we cannot read: `failed/malformed_response`.
    Broken,
}

impl CancelCause {
    fn outcome(self) -> Outcome {
        match self {
            Self::RingTimeout => Outcome::NoAnswer,
            Self::Stop => Outcome::Canceled,
            Self::Broken => Outcome::Failed,
        }
    }

    fn reason(self) -> Option<FailReason> {
        match self {
            Self::Broken => Some(FailReason::MalformedResponse),
            _ => None,
        }
    }
}

/// Resolves the next hop of `uri` (a numeric address at once; a name
/// through the resolver, bounded); the trunk when it cannot be resolved.
pub async fn resolve_hop(uri: &str, fallback: SocketAddr) -> SocketAddr {
    let Some((host, port)) = crate::sip::dialog::host_port(uri) else {
        return fallback;
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return SocketAddr::new(ip, port);
    }
    let lookup = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    match lookup {
        Ok(Ok(mut addrs)) => addrs.next().unwrap_or(fallback),
        _ => {
            tracing::warn!(%host, "cannot resolve the dialog's next hop, using the trunk");
            fallback
        }
    }
}

/// Places the call for `cmd`, reporting progress through `progress`, until
/// it ends; `hangup` ends it early (CANCEL or BYE), as does `shutdown`
/// (ringing calls are canceled; answered calls get [`CallContext::drain_talk`]).
pub async fn place_call(
    ctx: &CallContext,
    cmd: &DialCommand,
    progress: mpsc::UnboundedSender<Progress>,
    hangup: CancellationToken,
    shutdown: CancellationToken,
) -> Report {
    place_leg(ctx, cmd, LegOptions::default(), progress, hangup, shutdown).await
}

/// How one leg differs from a call to the trunk.
#[derive(Default)]
pub struct LegOptions {
    /// The Request-URI and To (default: the command's number at the trunk).
    pub remote_uri: Option<String>,
    /// Extra INVITE header lines, each ending in CRLF.
    pub invite_headers: String,
    /// The leg's audio comes from and goes to a bridge.
    pub io: Option<crate::rtp::stream::BridgeIo>,
    /// Where the peer's REFER (a blind transfer) is handed; a leg without
    /// it refuses REFER with 403 (a callee cannot move the call).
    pub transfer: Option<mpsc::UnboundedSender<TransferRequest>>,
}

/// A transfer the peer of a leg asked for by REFER (RFC 3515), accepted
/// with 202; the bridge reports its progress on `status`, which the leg
/// sends back as NOTIFYs. A status of 200 or more is the last one.
#[derive(Debug)]
pub struct TransferRequest {
    /// The Refer-To URI (sip: or sips:, without header parameters).
    pub target: String,
    /// Progress: (SIP status, reason phrase).
    pub status: mpsc::UnboundedSender<(u16, String)>,
}

/// [`place_call`] for one leg: the callee at the trunk, or an agent.
pub async fn place_leg(
    ctx: &CallContext,
    cmd: &DialCommand,
    leg: LegOptions,
    progress: mpsc::UnboundedSender<Progress>,
    hangup: CancellationToken,
    shutdown: CancellationToken,
) -> Report {
    let started = Instant::now();
    let (rtp, rtcp) = match ctx.ports.bind_pair(ctx.media_ip).await {
        Ok((rtp, rtcp)) => (rtp, rtcp),
        Err(e) => {
            tracing::error!(call_id = %cmd.call_id, error = %e, "no RTP port");
            return Report::unanswered(Outcome::Failed, Some(FailReason::NoRtpPort), None, started);
        }
    };
    let rtp_port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
    let sip_local = ctx.transport.local_addr().map(|a| a.port()).unwrap_or(5060);
    let host = format!("{}:{}", ctx.media_ip, sip_local);
    let transport = ctx.transport.transport_name(ctx.trunk);
    let (ruri_params, contact_params) = if transport == "TCP" {
        (";transport=tcp", ";transport=tcp")
    } else {
        ("", "")
    };
    let remote_uri = leg
        .remote_uri
        .clone()
        .unwrap_or_else(|| format!("sip:{}@{}{ruri_params}", cmd.phone, ctx.trunk_host));
    let mut dialog = Dialog::new(
        &cmd.call_id,
        remote_uri,
        format!("sip:{}@{}", cmd.caller_id, ctx.media_ip),
        format!("sip:dialstack@{host}{contact_params}"),
        host,
        transport,
    );
    dialog.invite_headers = leg.invite_headers;
    let session_id = fastrand::u64(1..1 << 40);
    let mut local_sdp = LocalSdp {
        ip: ctx.media_ip,
        port: rtp_port,
        session_id,
        version: session_id,
    };
    let mut rx = ctx.transport.register(&cmd.call_id);
    let mut phase = Phase::new(&cmd.call_id);
    let stop = StopSignals { hangup, shutdown };
    let report = match invite::run(
        ctx,
        cmd,
        &mut dialog,
        &local_sdp,
        &mut rx,
        &progress,
        started,
        &stop,
        &mut phase,
    )
    .await
    {
        invite::Ended::Answered(answer) => {
            session::run(
                ctx,
                cmd,
                &mut dialog,
                &mut local_sdp,
                &mut rx,
                answer,
                rtp,
                Some(rtcp),
                &progress,
                started,
                &stop,
                &mut phase,
                leg.io,
                leg.transfer,
            )
            .await
        }
        invite::Ended::NotAnswered(report) => report,
    };
    phase.go(CallPhase::Terminated);
    ctx.transport.unregister(&cmd.call_id);
    report
}

/// What ends a call early.
pub struct StopSignals {
    /// The hang-up command for this call.
    pub hangup: CancellationToken,
    /// The process is shutting down.
    pub shutdown: CancellationToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_map_to_outcomes() {
        assert_eq!(outcome_for_status(486).0, Outcome::Busy);
        assert_eq!(outcome_for_status(600).0, Outcome::Busy);
        assert_eq!(outcome_for_status(480).0, Outcome::NoAnswer);
        assert_eq!(outcome_for_status(404).0, Outcome::Rejected);
        assert_eq!(outcome_for_status(603).0, Outcome::Rejected);
        assert_eq!(
            outcome_for_status(503),
            (Outcome::Failed, Some(FailReason::TrunkError))
        );
        assert_eq!(
            outcome_for_status(302),
            (Outcome::Failed, Some(FailReason::RedirectUnsupported))
        );
        assert_eq!(
            outcome_for_status(407),
            (Outcome::Failed, Some(FailReason::TrunkAuth))
        );
    }

    #[test]
    fn phase_table_over_every_pair() {
        use CallPhase::*;
        let legal = [
            (Calling, Proceeding),
            (Calling, Canceling),
            (Calling, Confirmed),
            (Calling, Terminated),
            (Proceeding, Canceling),
            (Proceeding, Confirmed),
            (Proceeding, Terminated),
            (Canceling, Confirmed),
            (Canceling, Terminated),
            (Confirmed, Terminating),
            (Confirmed, Terminated),
            (Terminating, Terminated),
        ];
        for a in CallPhase::ALL {
            for b in CallPhase::ALL {
                assert_eq!(a.can_become(b), legal.contains(&(a, b)), "{a:?} -> {b:?}");
            }
        }
        let mut p = Phase::new("c");
        p.go(Confirmed);
        p.go(Proceeding); // refused
        assert_eq!(p.get(), Confirmed);
        p.go(Terminated);
        assert_eq!(p.get(), Terminated);
    }
}
