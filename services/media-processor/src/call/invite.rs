//! The INVITE client transaction (RFC 3261 §17.1.1) and what surrounds it
//! until the call is answered or over: retransmission (Timer A) until a
//! response or Timer B, one answer to a Digest challenge, CANCEL (§9.1: only
//! once a provisional response came, retransmitted like any non-INVITE
//! request, and followed by a wait for the INVITE's final response, so a
//! `200` that crosses it is still acknowledged and hung up), and the ACK of
//! every non-2xx final response.

use std::time::{Duration, Instant};

use dialstack_contract::{DialCommand, FailReason, Outcome};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant as Deadline};

use super::{
    outcome_for_status, CallContext, CallPhase, CancelCause, Phase, Progress, Report, StopSignals,
};
use crate::sip::digest::Challenge;
use crate::sip::sdp::LocalSdp;
use crate::sip::transport::DropReason;
use crate::sip::{response_to, Dialog, Inbound, Message};

/// How the INVITE transaction ended.
#[derive(Debug)]
pub enum Ended {
    /// A 2xx: the session begins.
    Answered(Message),
    /// Anything else, with the report of the call.
    NotAnswered(Report),
}

/// Our CANCEL: why, whether it is out, its retransmission and how long we
/// wait for the INVITE's final response after it.
struct Cancel {
    cause: CancelCause,
    /// Sent (it waits for a provisional response before that).
    sent: bool,
    /// Its own final response arrived: no more retransmissions.
    acknowledged: bool,
    retransmit_at: Deadline,
    interval: Duration,
    /// Give up waiting for the INVITE's final response.
    deadline: Deadline,
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

    let t0 = Deadline::now();
    let mut timer_b = t0 + t1 * 64;
    let ring_deadline = t0 + Duration::from_millis(cmd.ring_timeout_ms);
    // Over TCP nothing is retransmitted (RFC 3261 §17.1.1.2): only Timer B.
    let reliable = ctx.transport.reliable_to(ctx.trunk);
    let mut retransmit_at = if reliable { timer_b } else { t0 + t1 };
    let mut interval = t1;
    let mut provisional = false;
    let mut ringing = false;
    let mut challenged = false;
    let mut cancel: Option<Cancel> = None;
    let ended = |outcome, reason, status| {
        Ended::NotAnswered(Report::unanswered(outcome, reason, status, started))
    };
    let far = t0 + Duration::from_secs(86_400);

    loop {
        // Requests a cancel; it goes out now if a provisional response came.
        let mut start_cancel = None;
        tokio::select! {
            inbound = rx.recv() => match inbound {
                None => return ended(Outcome::Failed, Some(FailReason::Internal), None),
                Some(Inbound::Malformed { reason }) => {
                    tracing::warn!(%call_id, %reason, "malformed sip message from the peer, abandoning the call");
                    match cancel.as_mut() {
                        None => start_cancel = Some(CancelCause::Broken),
                        Some(c) => c.cause = CancelCause::Broken,
                    }
                }
                Some(Inbound::Msg { msg: m, from }) => {
                    match on_message(ctx, dialog, &m, from, call_id).await {
                        Seen::Ignored => {}
                        Seen::CancelAnswered => {
                            if let Some(c) = cancel.as_mut() {
                                c.acknowledged = true;
                            }
                        }
                        Seen::Provisional(code) => {
                            provisional = true;
                            if (code == 180 || code == 183) && !ringing {
                                ringing = true;
                                phase.go(CallPhase::Proceeding);
                                let _ = progress.send(Progress::Ringing);
                            }
                        }
                        Seen::Answered => {
                            if let Some(c) = &cancel {
                                // The 200 crossed our CANCEL: the callee did
                                // pick up, so the dialog is confirmed and
                                // ended at once.
                                phase.go(CallPhase::Confirmed);
                                super::session::ack_and_bye(ctx, dialog, &m, rx, &stop.shutdown).await;
                                tracing::info!(%call_id, "200 crossed our cancel, acknowledged and hung up");
                                return ended(c.cause.outcome(), c.cause.reason(), m.status());
                            }
                            return Ended::Answered(m);
                        }
                        Seen::Challenged(code) if !challenged && ctx.credentials.is_some() && cancel.is_none() => {
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
                            let now = Deadline::now();
                            provisional = false;
                            interval = t1;
                            timer_b = now + t1 * 64;
                            retransmit_at = if reliable { timer_b } else { now + t1 };
                        }
                        Seen::Challenged(code) | Seen::Final(code) => {
                            let (mut outcome, mut reason) = outcome_for_status(code);
                            if let Some(c) = &cancel {
                                if code == 487 {
                                    outcome = c.cause.outcome();
                                    reason = c.cause.reason();
                                } else if c.cause == CancelCause::Broken {
                                    (outcome, reason) = (Outcome::Failed, Some(FailReason::MalformedResponse));
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
            },
            _ = sleep_until(retransmit_at), if !provisional => {
                if Deadline::now() >= timer_b {
                    tracing::warn!(%call_id, "no response to INVITE (timer B)");
                    return match &cancel {
                        Some(c) => ended(c.cause.outcome(), c.cause.reason(), None),
                        None => ended(Outcome::Failed, Some(FailReason::Timeout), None),
                    };
                }
                ctx.transport.send_for(call_id, ctx.trunk, &invite).await;
                interval *= 2;
                retransmit_at += interval;
            }
            _ = sleep_until(ring_deadline), if cancel.is_none() => {
                tracing::info!(%call_id, "ring timeout, canceling");
                start_cancel = Some(CancelCause::RingTimeout);
            }
            _ = stop.hangup.cancelled(), if cancel.is_none() => {
                tracing::info!(%call_id, "hang-up requested before answer, canceling");
                start_cancel = Some(CancelCause::Stop);
            }
            _ = stop.shutdown.cancelled(), if cancel.is_none() => {
                tracing::info!(%call_id, "shutting down, canceling the unanswered call");
                start_cancel = Some(CancelCause::Stop);
            }
            _ = sleep_until(cancel.as_ref().map_or(far, |c| c.retransmit_at)),
                if cancel.as_ref().is_some_and(|c| c.sent && !c.acknowledged && !reliable) =>
            {
                if let Some(c) = cancel.as_mut() {
                    ctx.transport.send_for(call_id, ctx.trunk, &dialog.cancel()).await;
                    c.interval = (c.interval * 2).min(Duration::from_secs(4));
                    c.retransmit_at += c.interval;
                }
            }
            _ = sleep_until(cancel.as_ref().map_or(far, |c| c.deadline)), if cancel.as_ref().is_some_and(|c| c.sent) => {
                let cause = cancel.as_ref().map_or(CancelCause::Stop, |c| c.cause);
                tracing::warn!(%call_id, "no final response after cancel");
                let reason = match cause {
                    CancelCause::RingTimeout => Some(FailReason::CancelUnanswered),
                    other => other.reason(),
                };
                return ended(cause.outcome(), reason, None);
            }
        }
        if let Some(cause) = start_cancel {
            phase.go(CallPhase::Canceling);
            cancel = Some(Cancel {
                cause,
                sent: false,
                acknowledged: false,
                retransmit_at: far,
                interval: t1,
                deadline: far,
            });
        }
        // §9.1: a CANCEL goes out only once a provisional response came.
        if let Some(c) = cancel.as_mut() {
            // A peer that sent something unreadable did answer: cancel now.
            if !c.sent && (provisional || c.cause == CancelCause::Broken) {
                let now = Deadline::now();
                c.sent = true;
                c.retransmit_at = now + t1;
                // A peer that sent garbage gets a short wait for a crossing 200.
                // At shutdown the wait fits the drain budget.
                let wait = if c.cause == CancelCause::Broken {
                    t1 * 4
                } else if stop.shutdown.is_cancelled() {
                    (t1 * 64).min(ctx.drain_talk.max(t1 * 4))
                } else {
                    t1 * 64
                };
                c.deadline = now + wait;
                ctx.transport
                    .send_for(call_id, ctx.trunk, &dialog.cancel())
                    .await;
            }
        }
    }
}

/// What one message meant for the INVITE transaction.
enum Seen {
    /// Not ours, or nothing to do.
    Ignored,
    /// The final response to our CANCEL.
    CancelAnswered,
    /// A 1xx.
    Provisional(u16),
    /// A 2xx (the message itself is the answer).
    Answered,
    /// 401 or 407 (already acknowledged).
    Challenged(u16),
    /// Another final response (already acknowledged).
    Final(u16),
}

async fn on_message(
    ctx: &CallContext,
    dialog: &Dialog,
    m: &Message,
    from: std::net::SocketAddr,
    call_id: &str,
) -> Seen {
    if let Some(method) = m.method() {
        // Nothing but an ACK is expected before the dialog exists.
        if method != "ACK" {
            ctx.transport
                .send(
                    from,
                    &response_to(m, 481, "Call/Transaction Does Not Exist", None, "", ""),
                )
                .await;
        }
        return Seen::Ignored;
    }
    if !dialog.matches_invite(m) {
        ctx.transport.metrics().drop(DropReason::NoTransaction);
        tracing::debug!(%call_id, %from, "response to no transaction of this call dropped");
        return Seen::Ignored;
    }
    let Some(code) = m.status() else {
        return Seen::Ignored;
    };
    if m.cseq().is_some_and(|(_, meth)| meth == "CANCEL") {
        return if code >= 200 {
            Seen::CancelAnswered
        } else {
            Seen::Ignored
        };
    }
    match code {
        100..=199 => Seen::Provisional(code),
        200..=299 => Seen::Answered,
        _ => {
            ctx.transport
                .send_for(call_id, ctx.trunk, &dialog.ack_non2xx(m.to_tag()))
                .await;
            if code == 401 || code == 407 {
                Seen::Challenged(code)
            } else {
                Seen::Final(code)
            }
        }
    }
}
