//! One outbound call, from INVITE to BYE, as a user agent client (RFC 3261):
//! INVITE retransmission (Timer A) until a response or Timer B, CANCEL at the
//! ring timeout, ACK of every final response, RTP for the answered call, BYE
//! after the talk time (or 200 to the peer's BYE).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_common::events::{DialCommand, Outcome};
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::media::{run_stream, PortPool, RtpStats};
use crate::sip::{new_branch, parse_sdp_answer, response_to, sdp_offer, Dialog, Message};
use crate::transport::{Inbound, SipTransport};

/// Where and how calls are placed.
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
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Outcome.
    pub outcome: Outcome,
    /// Why, for `failed` and the like.
    pub reason: Option<String>,
    /// Final SIP status of the INVITE, if any.
    pub sip_status: Option<u16>,
    /// INVITE to answer or final response.
    pub ring_ms: i64,
    /// Answer to hang-up.
    pub talk_ms: i64,
    /// RTP packets sent.
    pub rtp_sent: u64,
    /// RTP packets received.
    pub rtp_received: u64,
}

/// The outcome a final non-2xx status means.
pub fn outcome_for_status(code: u16) -> (Outcome, Option<&'static str>) {
    match code {
        486 | 600 => (Outcome::Busy, None),
        408 | 480 => (Outcome::NoAnswer, None),
        487 => (Outcome::Canceled, None),
        300..=399 => (Outcome::Failed, Some("redirect_unsupported")),
        401 | 407 => (Outcome::Failed, Some("trunk_auth")),
        400..=499 | 603 | 604 | 606 => (Outcome::Rejected, None),
        _ => (Outcome::Failed, Some("trunk_error")),
    }
}

fn failed(reason: &str, started: Instant, sip_status: Option<u16>) -> Report {
    Report {
        outcome: Outcome::Failed,
        reason: Some(reason.to_owned()),
        sip_status,
        ring_ms: started.elapsed().as_millis() as i64,
        talk_ms: 0,
        rtp_sent: 0,
        rtp_received: 0,
    }
}

/// Places the call for `cmd`, reporting progress through `progress`.
pub async fn place_call(
    ctx: &CallContext,
    cmd: &DialCommand,
    progress: mpsc::UnboundedSender<Progress>,
    shutdown: CancellationToken,
) -> Report {
    let started = Instant::now();
    let rtp = match ctx.ports.bind(ctx.media_ip).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(call_id = %cmd.call_id, error = %e, "no RTP port");
            return failed("no_rtp_port", started, None);
        }
    };
    let rtp_port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
    let sip_local = ctx.transport.local_addr().map(|a| a.port()).unwrap_or(5060);
    let host = format!("{}:{}", ctx.media_ip, sip_local);
    let mut dialog = Dialog {
        call_id: cmd.call_id.clone(),
        local_tag: format!("{:x}", fastrand::u64(..)),
        remote_tag: None,
        remote_uri: format!("sip:{}@{}", cmd.phone, ctx.trunk_host),
        remote_target: None,
        local_uri: format!("sip:{}@{}", cmd.caller_id, ctx.media_ip),
        contact: format!("sip:dialstack@{host}"),
        via_host: host,
        invite_cseq: 1,
        invite_branch: new_branch(),
    };
    let invite = dialog.invite(&sdp_offer(
        ctx.media_ip,
        rtp_port,
        fastrand::u64(1..1 << 40),
    ));
    let mut rx = ctx.transport.register(&cmd.call_id);
    let report = run_dialog(
        ctx,
        cmd,
        &mut dialog,
        &invite,
        &mut rx,
        rtp,
        &progress,
        started,
        &shutdown,
    )
    .await;
    ctx.transport.unregister(&cmd.call_id);
    report
}

#[allow(clippy::too_many_arguments)]
async fn run_dialog(
    ctx: &CallContext,
    cmd: &DialCommand,
    dialog: &mut Dialog,
    invite: &str,
    rx: &mut mpsc::Receiver<Inbound>,
    rtp: Arc<tokio::net::UdpSocket>,
    progress: &mpsc::UnboundedSender<Progress>,
    started: Instant,
    shutdown: &CancellationToken,
) -> Report {
    let t1 = ctx.t1;
    let t0 = tokio::time::Instant::now();
    ctx.transport.send(ctx.trunk, invite).await;
    let _ = progress.send(Progress::Dialing);

    let timer_b = t0 + t1 * 64;
    let ring_deadline = t0 + Duration::from_millis(cmd.ring_timeout_ms);
    let mut retransmit_at = t0 + t1;
    let mut interval = t1;
    let mut got_response = false;
    let mut ringing = false;
    let mut cancel_deadline: Option<tokio::time::Instant> = None;

    let answer: Message = loop {
        tokio::select! {
            inbound = rx.recv() => match inbound {
                None => return failed("internal", started, None),
                Some(Inbound::Malformed(reason)) => {
                    tracing::warn!(call_id = %cmd.call_id, %reason, "malformed sip response, abandoning call");
                    ctx.transport.send(ctx.trunk, &dialog.cancel()).await;
                    return failed("malformed_response", started, None);
                }
                Some(Inbound::Msg(m, from)) => {
                    if let Some(method) = m.method() {
                        // A request inside an unanswered dialog: only BYE/CANCEL make sense.
                        let code = if method == "ACK" { continue } else { 481 };
                        ctx.transport.send(from, &response_to(&m, code, "Call/Transaction Does Not Exist", None, "", "")).await;
                        continue;
                    }
                    let Some(code) = m.status() else { continue };
                    if m.cseq().map(|(_, meth)| meth) != Some("INVITE".into()) {
                        continue; // response to our CANCEL
                    }
                    got_response = true;
                    match code {
                        100..=199 => {
                            if (code == 180 || code == 183) && !ringing {
                                ringing = true;
                                let _ = progress.send(Progress::Ringing);
                            }
                        }
                        200..=299 => break m,
                        _ => {
                            ctx.transport.send(ctx.trunk, &dialog.ack_non2xx(m.to_tag().as_deref())).await;
                            let (mut outcome, reason) = outcome_for_status(code);
                            if code == 487 && cancel_deadline.is_some() {
                                outcome = Outcome::NoAnswer;
                            }
                            ctx.setup_seconds.observe(started.elapsed().as_secs_f64());
                            tracing::info!(call_id = %cmd.call_id, status = code, outcome = outcome.as_str(), "call not answered");
                            return Report {
                                outcome,
                                reason: reason.map(str::to_owned),
                                sip_status: Some(code),
                                ring_ms: started.elapsed().as_millis() as i64,
                                talk_ms: 0,
                                rtp_sent: 0,
                                rtp_received: 0,
                            };
                        }
                    }
                }
            },
            _ = sleep_until(retransmit_at), if !got_response => {
                if tokio::time::Instant::now() >= timer_b {
                    tracing::warn!(call_id = %cmd.call_id, "no response to INVITE (timer B)");
                    return failed("timeout", started, None);
                }
                ctx.transport.send(ctx.trunk, invite).await;
                interval *= 2;
                retransmit_at += interval;
            }
            _ = sleep_until(ring_deadline), if cancel_deadline.is_none() => {
                tracing::info!(call_id = %cmd.call_id, "ring timeout, canceling");
                ctx.transport.send(ctx.trunk, &dialog.cancel()).await;
                cancel_deadline = Some(tokio::time::Instant::now() + t1 * 64);
            }
            _ = sleep_until(cancel_deadline.unwrap_or(timer_b)), if cancel_deadline.is_some() => {
                let mut r = failed("cancel_unanswered", started, None);
                r.outcome = Outcome::NoAnswer;
                return r;
            }
            _ = shutdown.cancelled(), if cancel_deadline.is_none() && !got_response => {
                // Not yet ringing at shutdown: cancel rather than leave a half call.
                ctx.transport.send(ctx.trunk, &dialog.cancel()).await;
                cancel_deadline = Some(tokio::time::Instant::now() + t1 * 8);
            }
        }
    };

    // Answered.
    dialog.remote_tag = answer.to_tag();
    dialog.remote_target = answer.contact_uri();
    let ack = dialog.ack_2xx();
    ctx.transport.send(ctx.trunk, &ack).await;
    let ring_ms = started.elapsed().as_millis() as i64;
    ctx.setup_seconds.observe(started.elapsed().as_secs_f64());
    let _ = progress.send(Progress::Answered { ring_ms });
    let answered_at = Instant::now();
    let stats = Arc::new(RtpStats::default());
    let stop_media = CancellationToken::new();
    let media = match parse_sdp_answer(&answer.body) {
        Ok(sdp) => Some(tokio::spawn(run_stream(
            rtp,
            sdp.addr,
            sdp.payload_type,
            stats.clone(),
            stop_media.clone(),
        ))),
        Err(reason) => {
            tracing::warn!(call_id = %cmd.call_id, %reason, "unusable SDP answer, call continues without media");
            None
        }
    };
    let talk_end = tokio::time::Instant::now() + Duration::from_millis(cmd.talk_time_ms);
    let mut peer_hung_up = false;
    loop {
        tokio::select! {
            inbound = rx.recv() => match inbound {
                None => break,
                Some(Inbound::Malformed(reason)) => {
                    tracing::warn!(call_id = %cmd.call_id, %reason, "malformed sip message during call");
                }
                Some(Inbound::Msg(m, from)) => match m.method() {
                    Some("BYE") => {
                        ctx.transport.send(from, &response_to(&m, 200, "OK", None, "", "")).await;
                        peer_hung_up = true;
                        break;
                    }
                    Some("ACK") => {}
                    Some(_) => {
                        ctx.transport.send(from, &response_to(&m, 200, "OK", None, "", "")).await;
                    }
                    None => {
                        // A retransmitted 200: our ACK was lost.
                        if m.status().is_some_and(|c| (200..300).contains(&c)) {
                            ctx.transport.send(ctx.trunk, &ack).await;
                        }
                    }
                },
            },
            _ = sleep_until(talk_end) => break,
            _ = shutdown.cancelled() => break,
        }
    }
    let talk_ms = answered_at.elapsed().as_millis() as i64;
    stop_media.cancel();
    if let Some(h) = media {
        let _ = h.await;
    }
    if !peer_hung_up {
        hang_up(ctx, dialog, rx, &cmd.call_id).await;
    }
    tracing::info!(call_id = %cmd.call_id, talk_ms, peer_hung_up, "call ended");
    Report {
        outcome: Outcome::AnsweredHuman,
        reason: None,
        sip_status: answer.status(),
        ring_ms,
        talk_ms,
        rtp_sent: stats.sent.load(std::sync::atomic::Ordering::Relaxed),
        rtp_received: stats.received.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Sends BYE and retransmits it (Timer E, capped at T2 = 4 s) until a final
/// response or Timer F.
async fn hang_up(
    ctx: &CallContext,
    dialog: &Dialog,
    rx: &mut mpsc::Receiver<Inbound>,
    call_id: &str,
) {
    let bye = dialog.bye(&new_branch());
    let t0 = tokio::time::Instant::now();
    let timer_f = t0 + ctx.t1 * 64;
    let mut interval = ctx.t1;
    let mut next = t0 + interval;
    ctx.transport.send(ctx.trunk, &bye).await;
    loop {
        tokio::select! {
            inbound = rx.recv() => match inbound {
                None => return,
                Some(Inbound::Msg(m, from)) => {
                    if let Some(method) = m.method() {
                        if method == "BYE" {
                            ctx.transport.send(from, &response_to(&m, 200, "OK", None, "", "")).await;
                            return;
                        }
                        continue;
                    }
                    let is_bye = m.cseq().is_some_and(|(_, meth)| meth == "BYE");
                    if is_bye && m.status().is_some_and(|c| c >= 200) {
                        return;
                    }
                }
                Some(Inbound::Malformed(_)) => {}
            },
            _ = sleep_until(next) => {
                if tokio::time::Instant::now() >= timer_f {
                    tracing::warn!(%call_id, "no answer to BYE (timer F)");
                    return;
                }
                ctx.transport.send(ctx.trunk, &bye).await;
                interval = (interval * 2).min(Duration::from_secs(4));
                next += interval;
            }
        }
    }
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
            (Outcome::Failed, Some("trunk_error"))
        );
        assert_eq!(
            outcome_for_status(302),
            (Outcome::Failed, Some("redirect_unsupported"))
        );
        assert_eq!(
            outcome_for_status(407),
            (Outcome::Failed, Some("trunk_auth"))
        );
    }
}
