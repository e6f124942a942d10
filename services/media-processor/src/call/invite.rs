//! The INVITE client transaction (RFC 3261 §17.1.1) and what surrounds it
//! until the call is answered or over: retransmission (Timer A) until a
//! response or Timer B, one answer to a Digest challenge, CANCEL, and the
//! ACK of every non-2xx final response.

use std::time::{Duration, Instant};

use dialstack_contract::{DialCommand, FailReason, Outcome};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use super::{
    outcome_for_status, CallContext, CallPhase, CancelCause, Phase, Progress, Report, StopSignals,
};
use crate::sip::digest::Challenge;
use crate::sip::sdp::LocalSdp;
use crate::sip::transport::Drop;
use crate::sip::{response_to, Dialog, Inbound, Message};

/// How the INVITE transaction ended.
#[derive(Debug)]
pub enum Ended {
    /// A 2xx: the session begins.
    Answered(Message),
    /// Anything else, with the report of the call.
    NotAnswered(Report),
}

/// Runs the INVITE transaction for `cmd`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: &CallContext,
    cmd: &DialCommand,
    dialog: &mut Dialog,
    sdp: &LocalSdp,
    rx: &mut mpsc::Receiver<Inbound>,
    progress: &mpsc::UnboundedSender<Progress>,
    started: Instant,
    stop: &StopSignals,
    phase: &mut Phase,
) -> Ended {
    let t1 = ctx.t1;
    let offer = sdp.offer();
    let mut invite = dialog.invite(&offer);
    let call_id = cmd.call_id.as_str();
    ctx.transport.send_for(call_id, ctx.trunk, &invite).await;
    let _ = progress.send(Progress::Dialing);

    let t0 = tokio::time::Instant::now();
    let mut timer_b = t0 + t1 * 64;
    let ring_deadline = t0 + Duration::from_millis(cmd.ring_timeout_ms);
    // Over TCP nothing is retransmitted (RFC 3261 §17.1.1.2): only Timer B.
    let reliable = ctx.transport.reliable_to(ctx.trunk);
    let mut retransmit_at = if reliable { timer_b } else { t0 + t1 };
    let mut interval = t1;
    let mut got_response = false;
    let mut ringing = false;
    let mut challenged = false;
    let mut cancel: Option<(CancelCause, tokio::time::Instant)> = None;
    let ended = |outcome, reason, status| {
        Ended::NotAnswered(Report::unanswered(outcome, reason, status, started))
    };

    loop {
        tokio::select! {
            inbound = rx.recv() => {
                let (m, from) = match inbound {
                    None => return ended(Outcome::Failed, Some(FailReason::Internal), None),
                    Some(Inbound::Msg { msg, from }) => (msg, from),
                    Some(Inbound::Malformed { reason }) => {
                        tracing::warn!(%call_id, %reason, "malformed sip message from the peer, abandoning the call");
                        if cancel.is_none() {
                            ctx.transport.send_for(call_id, ctx.trunk, &dialog.cancel()).await;
                        }
                        return ended(Outcome::Failed, Some(FailReason::MalformedResponse), None);
                    }
                };
                if let Some(method) = m.method() {
                    // Nothing but an ACK is expected before the dialog exists.
                    if method != "ACK" {
                        ctx.transport
                            .send(from, &response_to(&m, 481, "Call/Transaction Does Not Exist", None, "", ""))
                            .await;
                    }
                    continue;
                }
                if !dialog.matches_invite(&m) {
                    ctx.transport.metrics().drop(Drop::NoTransaction);
                    tracing::debug!(%call_id, %from, "response to no transaction of this call dropped");
                    continue;
                }
                let Some(code) = m.status() else { continue };
                if m.cseq().is_some_and(|(_, meth)| meth == "CANCEL") {
                    continue; // the CANCEL's own response
                }
                got_response = true;
                match code {
                    100..=199 => {
                        if (code == 180 || code == 183) && !ringing {
                            ringing = true;
                            phase.go(CallPhase::Proceeding);
                            let _ = progress.send(Progress::Ringing);
                        }
                    }
                    200..=299 => {
                        if let Some((cause, _)) = cancel {
                            // The 200 crossed our CANCEL: the callee did pick
                            // up, so the dialog is confirmed and ended at once.
                            phase.go(CallPhase::Confirmed);
                            super::session::ack_and_bye(ctx, dialog, &m, rx).await;
                            tracing::info!(%call_id, "200 crossed our cancel, acknowledged and hung up");
                            return ended(cause.outcome(), None, Some(code));
                        }
                        return Ended::Answered(m);
                    }
                    401 | 407 if !challenged && ctx.credentials.is_some() && cancel.is_none() => {
                        ctx.transport.send_for(call_id, ctx.trunk, &dialog.ack_non2xx(m.to_tag())).await;
                        let (ask, answer) = if code == 401 {
                            ("www-authenticate", "Authorization")
                        } else {
                            ("proxy-authenticate", "Proxy-Authorization")
                        };
                        let challenge = match Challenge::pick(m.header_values_raw(ask)) {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(%call_id, error = %e, "trunk challenge cannot be answered");
                                return ended(Outcome::Failed, Some(FailReason::TrunkAuth), Some(code));
                            }
                        };
                        challenged = true;
                        let Some(creds) = &ctx.credentials else { continue };
                        let cnonce = format!("{:016x}", fastrand::u64(..));
                        let value = challenge.authorize(creds, "INVITE", &dialog.remote_uri, 1, &cnonce);
                        dialog.next_invite((answer, value));
                        invite = dialog.invite(&offer);
                        tracing::info!(%call_id, status = code, "trunk challenged, invite sent again with credentials");
                        ctx.transport.send_for(call_id, ctx.trunk, &invite).await;
                        let now = tokio::time::Instant::now();
                        got_response = false;
                        interval = t1;
                        timer_b = now + t1 * 64;
                        retransmit_at = if reliable { timer_b } else { now + t1 };
                    }
                    _ => {
                        ctx.transport.send_for(call_id, ctx.trunk, &dialog.ack_non2xx(m.to_tag())).await;
                        let (mut outcome, mut reason) = outcome_for_status(code);
                        if code == 487 {
                            if let Some((cause, _)) = cancel {
                                outcome = cause.outcome();
                            }
                        }
                        if challenged && (code == 401 || code == 407) {
                            tracing::warn!(%call_id, status = code, "trunk refused our credentials");
                            reason = Some(FailReason::TrunkAuth);
                        }
                        ctx.setup_seconds.observe(started.elapsed().as_secs_f64());
                        tracing::info!(%call_id, status = code, outcome = outcome.as_str(), "call not answered");
                        return ended(outcome, reason, Some(code));
                    }
                }
            }
            _ = sleep_until(retransmit_at), if !got_response => {
                if tokio::time::Instant::now() >= timer_b {
                    tracing::warn!(%call_id, "no response to INVITE (timer B)");
                    let outcome = cancel.map_or(Outcome::Failed, |(c, _)| c.outcome());
                    let reason = if cancel.is_some() { None } else { Some(FailReason::Timeout) };
                    return ended(outcome, reason, None);
                }
                ctx.transport.send_for(call_id, ctx.trunk, &invite).await;
                interval *= 2;
                retransmit_at += interval;
            }
            _ = sleep_until(ring_deadline), if cancel.is_none() => {
                tracing::info!(%call_id, "ring timeout, canceling");
                cancel = Some((CancelCause::RingTimeout, tokio::time::Instant::now() + t1 * 64));
                phase.go(CallPhase::Canceling);
                ctx.transport.send_for(call_id, ctx.trunk, &dialog.cancel()).await;
            }
            _ = stop.hangup.cancelled(), if cancel.is_none() => {
                tracing::info!(%call_id, "hang-up requested before answer, canceling");
                cancel = Some((CancelCause::Stop, tokio::time::Instant::now() + t1 * 16));
                phase.go(CallPhase::Canceling);
                ctx.transport.send_for(call_id, ctx.trunk, &dialog.cancel()).await;
            }
            _ = stop.shutdown.cancelled(), if cancel.is_none() => {
                tracing::info!(%call_id, "shutting down, canceling the unanswered call");
                cancel = Some((CancelCause::Stop, tokio::time::Instant::now() + t1 * 16));
                phase.go(CallPhase::Canceling);
                ctx.transport.send_for(call_id, ctx.trunk, &dialog.cancel()).await;
            }
            _ = sleep_until(cancel.map_or(timer_b, |(_, d)| d)), if cancel.is_some() => {
                let cause = cancel.map_or(CancelCause::Stop, |(c, _)| c);
                tracing::warn!(%call_id, "no final response after cancel");
                let reason = (cause == CancelCause::RingTimeout).then_some(FailReason::CancelUnanswered);
                return ended(cause.outcome(), reason, None);
            }
        }
    }
}
