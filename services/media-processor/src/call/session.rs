//! The answered call: ACK of the 2xx along the dialog's route, RTP while
//! the call lasts, the peer's in-dialog requests (BYE; re-INVITE and UPDATE
//! answered with our SDP, hold respected), and our BYE at the end (Timer E
//! retransmission, one answer to a Digest challenge, Timer F).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dialstack_contract::{DialCommand, Outcome};
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use super::{resolve_hop, CallContext, CallPhase, Phase, Progress, Report, StopSignals};
use crate::rtp::stream::{run_stream, AudioPipe, BridgeIo, StreamReport, LIVE_FRAMES};
use crate::sip::dialog::InDialog;
use crate::sip::digest::Challenge;
use crate::sip::sdp::{parse_remote, LocalSdp, RemoteMedia};
use crate::sip::transport::DropReason;
use crate::sip::{response_to, Dialog, Inbound, Message};

/// Runs the answered call until either side hangs up.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: &CallContext,
    cmd: &DialCommand,
    dialog: &mut Dialog,
    local_sdp: &mut LocalSdp,
    rx: &mut mpsc::Receiver<Inbound>,
    answer: Message,
    rtp: tokio::net::UdpSocket,
    rtcp: Option<tokio::net::UdpSocket>,
    progress: &mpsc::UnboundedSender<Progress>,
    started: Instant,
    stop: &StopSignals,
    phase: &mut Phase,
    leg_io: Option<BridgeIo>,
    transfer: Option<mpsc::UnboundedSender<super::TransferRequest>>,
) -> Report {
    let call_id = cmd.call_id.as_str();
    dialog.confirm(&answer);
    phase.go(CallPhase::Confirmed);
    let hop = resolve_hop(&dialog.next_hop_uri(), ctx.trunk).await;
    let ack = dialog.ack_2xx();
    ctx.transport.send_for(call_id, hop, &ack).await;
    let ring_ms = started.elapsed().as_millis() as i64;
    ctx.setup_seconds.observe(started.elapsed().as_secs_f64());
    let _ = progress.send(Progress::Answered { ring_ms });
    let answered_at = Instant::now();
    // A callee leg of a bridged campaign: an agent is found and called
    // beside this loop; the callee's audio goes through two pipes.
    let end_callee = CancellationToken::new();
    let callee_gone = CancellationToken::new();
    // A bridged call's talk time runs from the agent's connection (the
    // wait for an agent and the compliance message are not talk).
    let connected = CancellationToken::new();
    let mut io = leg_io;
    let mut bridge_task = None;
    let mut ivr_task = None;
    let wants_ivr = cmd.ivr.is_some()
        || cmd
            .amd
            .as_ref()
            .is_some_and(|a| a.mode == dialstack_contract::ivr::AmdMode::Detect);
    if io.is_none() && wants_ivr {
        match &ctx.ivr {
            Some(ictx) => {
                let callee_io = BridgeIo {
                    heard: AudioPipe::listener(super::ivr::LISTEN_FRAMES),
                    say: AudioPipe::new(super::bridge::PROMPT_FRAMES),
                    keys: Some(crate::rtp::stream::Keys::new()),
                };
                io = Some(callee_io.clone());
                ivr_task = Some(tokio::spawn(super::ivr::run(super::ivr::Job {
                    ctx: ctx.clone(),
                    ictx: ictx.clone(),
                    cmd: cmd.clone(),
                    io: callee_io,
                    answered_at,
                    progress: progress.clone(),
                    end_callee: end_callee.clone(),
                    callee_gone: callee_gone.clone(),
                    connected: connected.clone(),
                    shutdown: stop.shutdown.clone(),
                })));
            }
            None => {
                tracing::warn!(%call_id, "IVR flow or machine detection asked for, but this process has no speech engines: tone");
            }
        }
    }
    // (An IVR campaign's command carries a bridge for its flow's
    // `transfer`; without the engines that flow cannot run, and the call is
    // not handed to an agent either.)
    if let (None, None, Some(spec), Some(bctx)) = (&io, &cmd.ivr, &cmd.bridge, &ctx.bridge) {
        let callee_io = BridgeIo {
            heard: AudioPipe::new(LIVE_FRAMES),
            say: AudioPipe::new(super::bridge::PROMPT_FRAMES),
            keys: None,
        };
        io = Some(callee_io.clone());
        bridge_task = Some(tokio::spawn(super::bridge::run(super::bridge::Job {
            ctx: ctx.clone(),
            bctx: bctx.clone(),
            cmd: cmd.clone(),
            spec: spec.clone(),
            io: callee_io,
            answered_at,
            progress: progress.clone(),
            end_callee: end_callee.clone(),
            callee_gone: callee_gone.clone(),
            connected: connected.clone(),
            shutdown: stop.shutdown.clone(),
        })));
    }
    let stop_media = CancellationToken::new();
    let mut media_tx: Option<watch::Sender<RemoteMedia>> = None;
    let mut media_task = None;
    match answer.body_str().map(parse_remote) {
        Some(Ok(remote)) => {
            let (tx, rx_media) = watch::channel(remote);
            media_tx = Some(tx);
            let mut recording = match (&ctx.media.recorder, cmd.record) {
                (Some(rec), true) => rec.begin(
                    dialstack_contract::CallRef {
                        call_id: cmd.call_id.clone(),
                        attempt_id: cmd.attempt_id.clone(),
                        campaign_id: cmd.campaign_id.clone(),
                        phone: cmd.phone.clone(),
                        at_ms: 0,
                        team: cmd.team.clone(),
                    },
                    cmd.recording_retention_days,
                ),
                _ => None,
            };
            if let Some(r) = recording.as_mut() {
                r.set_transcribe(cmd.transcribe);
            }
            media_task = Some(tokio::spawn(run_stream(
                rtp,
                rtcp,
                rx_media,
                ctx.media.clone(),
                recording,
                stop_media.clone(),
                io,
            )));
        }
        Some(Err(reason)) => {
            tracing::warn!(%call_id, %reason, "unusable SDP answer, call continues without media");
        }
        None => tracing::warn!(%call_id, "SDP answer not UTF-8, call continues without media"),
    }
    let talk_time = Duration::from_millis(cmd.talk_time_ms);
    let far_away = tokio::time::Instant::now() + Duration::from_secs(86_400);
    // A bridged call's talk time starts at the agent; an IVR call lasts
    // as its flow says (each step has its own limit), at most
    // MAX_IVR_CALL, unless it reaches an agent.
    let mut talk_end = if bridge_task.is_some() {
        far_away
    } else if ivr_task.is_some() {
        tokio::time::Instant::now() + super::ivr::MAX_IVR_CALL
    } else {
        tokio::time::Instant::now() + talk_time
    };
    let mut talk_started = bridge_task.is_none() && ivr_task.is_none();
    let mut draining = false;
    let mut peer_hung_up = false;
    // The last response to a request of the peer (its CSeq), for its
    // retransmissions; and our 2xx to a re-INVITE, retransmitted (Timer G
    // style, T1 doubling to T2) until its ACK, for at most 64·T1.
    let mut last_response: Option<(u32, String)> = None;
    let mut pending_2xx: Option<Pending2xx> = None;
    // A transfer the peer asked for (REFER accepted): the CSeq of its
    // REFER and the bridge's progress, sent on as NOTIFYs; and our last
    // NOTIFY, retransmitted until it is answered.
    let mut refer: Option<(u32, mpsc::UnboundedReceiver<(u16, String)>)> = None;
    let mut pending_notify: Option<PendingRequest> = None;
    let reliable = ctx.transport.reliable_to(hop);
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        tokio::select! {
            _ = sleep_until(pending_2xx.as_ref().map_or(far, |p| p.next)), if pending_2xx.is_some() => {
                if let Some(p) = pending_2xx.as_mut() {
                    if tokio::time::Instant::now() >= p.give_up {
                        tracing::warn!(%call_id, "no ACK for our 2xx to a re-INVITE");
                        pending_2xx = None;
                    } else {
                        ctx.transport.send(p.to, &p.response).await;
                        p.interval = (p.interval * 2).min(Duration::from_secs(4));
                        p.next += p.interval;
                    }
                }
            }
            status = async {
                match refer.as_mut() {
                    Some((_, r)) => r.recv().await,
                    None => std::future::pending().await,
                }
            }, if refer.is_some() => {
                let refer_cseq = refer.as_ref().map_or(0, |r| r.0);
                // The bridge gone without a last word: the transfer failed.
                let (code, reason) = status.unwrap_or((503, "Service Unavailable".into()));
                let last = code >= 200;
                if last {
                    refer = None;
                }
                let (branch, req) = dialog.notify_refer(refer_cseq, code, &reason, last);
                ctx.transport.send_for(call_id, hop, &req).await;
                pending_notify = Some(PendingRequest::new(branch, req, ctx.t1, reliable));
            }
            _ = sleep_until(pending_notify.as_ref().map_or(far, |p| p.next)), if pending_notify.is_some() => {
                if let Some(p) = pending_notify.as_mut() {
                    if tokio::time::Instant::now() >= p.give_up {
                        tracing::warn!(%call_id, "no answer to our NOTIFY (timer F)");
                        pending_notify = None;
                    } else {
                        ctx.transport.send_for(call_id, hop, &p.request).await;
                        p.interval = (p.interval * 2).min(Duration::from_secs(4));
                        p.next += p.interval;
                    }
                }
            }
            inbound = rx.recv() => {
                let (m, from) = match inbound {
                    None => break,
                    Some(Inbound::Msg { msg, from }) => (msg, from),
                    Some(Inbound::Malformed { reason }) => {
                        tracing::warn!(%call_id, %reason, "malformed sip message from the peer during the call");
                        continue;
                    }
                };
                match m.method() {
                    None => {
                        // A retransmitted 2xx of our INVITE: our ACK was lost.
                        if dialog.matches_invite(&m) && m.status().is_some_and(|c| (200..300).contains(&c)) {
                            ctx.transport.send_for(call_id, hop, &ack).await;
                        } else if pending_notify.as_ref().is_some_and(|p| m.top_branch() == Some(p.branch.as_str())) {
                            if m.status().is_some_and(|c| c >= 200) {
                                pending_notify = None;
                            }
                        } else {
                            ctx.transport.metrics().drop(DropReason::NoTransaction);
                        }
                    }
                    Some(method) => {
                        match dialog.check_request(&m) {
                            InDialog::TagMismatch => {
                                ctx.transport.metrics().drop(DropReason::TagMismatch);
                                tracing::warn!(%call_id, %from, %method, "in-dialog request with wrong tags dropped");
                                continue;
                            }
                            InDialog::CseqOrder => {
                                ctx.transport.metrics().drop(DropReason::CseqOrder);
                                if method != "ACK" {
                                    ctx.transport.send(from, &response_to(&m, 500, "Server Internal Error", None, "", "")).await;
                                }
                                continue;
                            }
                            InDialog::Retransmission => {
                                let cseq = m.cseq().map(|(n, _)| n);
                                if let Some((n, resp)) = &last_response {
                                    if Some(*n) == cseq {
                                        ctx.transport.send(from, resp).await;
                                    }
                                }
                                continue;
                            }
                            InDialog::Ok => {}
                        }
                        let cseq = m.cseq().map_or(0, |(n, _)| n);
                        match method {
                            "BYE" => {
                                ctx.transport.send(from, &response_to(&m, 200, "OK", None, "", "")).await;
                                peer_hung_up = true;
                                break;
                            }
                            "ACK" => {
                                if pending_2xx.as_ref().is_some_and(|p| p.cseq == cseq) {
                                    pending_2xx = None;
                                }
                            }
                            "INVITE" | "UPDATE" => {
                                let resp = renegotiate(dialog, local_sdp, &m, media_tx.as_ref(), call_id);
                                ctx.transport.send(from, &resp).await;
                                if method == "INVITE" && resp.starts_with("SIP/2.0 2") && !reliable {
                                    let now = tokio::time::Instant::now();
                                    pending_2xx = Some(Pending2xx {
                                        cseq,
                                        response: resp.clone(),
                                        to: from,
                                        next: now + ctx.t1,
                                        interval: ctx.t1,
                                        give_up: now + ctx.t1 * 64,
                                    });
                                }
                                last_response = Some((cseq, resp));
                            }
                            "REFER" => {
                                let accepted = match (&transfer, refer.is_some()) {
                                    (None, _) => Err((403, "Forbidden")),
                                    (Some(_), true) => Err((491, "Request Pending")),
                                    (Some(tx), false) => refer_target(&m).and_then(|target| {
                                        let (stx, srx) = mpsc::unbounded_channel();
                                        tx.send(super::TransferRequest { target, status: stx })
                                            .map(|_| srx)
                                            .map_err(|_| (403, "Forbidden"))
                                    }),
                                };
                                let resp = match accepted {
                                    Ok(srx) => {
                                        refer = Some((cseq, srx));
                                        let contact = format!("Contact: <{}>\r\n", dialog.contact);
                                        response_to(&m, 202, "Accepted", None, &contact, "")
                                    }
                                    Err((code, reason)) => {
                                        tracing::warn!(%call_id, %from, code, refer_to = ?m.header("refer-to"), "REFER refused");
                                        response_to(&m, code, reason, None, "", "")
                                    }
                                };
                                let ok = resp.starts_with("SIP/2.0 2");
                                ctx.transport.send(from, &resp).await;
                                last_response = Some((cseq, resp));
                                if ok {
                                    // RFC 3515 §2.4.4: a NOTIFY right away.
                                    let (branch, req) = dialog.notify_refer(cseq, 100, "Trying", false);
                                    ctx.transport.send_for(call_id, hop, &req).await;
                                    pending_notify = Some(PendingRequest::new(branch, req, ctx.t1, reliable));
                                }
                            }
                            _ => {
                                let resp = response_to(&m, 200, "OK", None, "", "");
                                ctx.transport.send(from, &resp).await;
                                last_response = Some((cseq, resp));
                            }
                        }
                    }
                }
            }
            _ = sleep_until(talk_end) => break,
            _ = end_callee.cancelled() => break,
            _ = connected.cancelled(), if !talk_started => {
                talk_started = true;
                talk_end = talk_end.min(tokio::time::Instant::now() + talk_time);
            }
            _ = stop.hangup.cancelled() => {
                tracing::info!(%call_id, "hang-up requested");
                // A transfer's last word (the bridge hangs up the agent
                // right after it) goes out before our BYE.
                if let Some((refer_cseq, mut r)) = refer.take() {
                    while let Ok((code, reason)) = r.try_recv() {
                        let (_, req) = dialog.notify_refer(refer_cseq, code, &reason, code >= 200);
                        ctx.transport.send_for(call_id, hop, &req).await;
                    }
                }
                break;
            }
            _ = stop.shutdown.cancelled(), if !draining => {
                draining = true;
                talk_end = talk_end.min(tokio::time::Instant::now() + ctx.drain_talk);
            }
        }
    }
    let talk_ms = answered_at.elapsed().as_millis() as i64;
    callee_gone.cancel();
    stop_media.cancel();
    let stats = match media_task {
        Some(h) => h.await.unwrap_or_default(),
        None => StreamReport::default(),
    };
    if !peer_hung_up {
        phase.go(CallPhase::Terminating);
        hang_up(ctx, dialog, rx, hop, &stop.shutdown).await;
    }
    let mut ivr_end = match ivr_task {
        Some(t) => t.await.unwrap_or_default(),
        None => super::ivr::IvrEnd::default(),
    };
    let bridged = match bridge_task {
        Some(t) => t.await.unwrap_or_default(),
        None => std::mem::take(&mut ivr_end.bridge),
    };
    tracing::info!(
        %call_id,
        talk_ms,
        peer_hung_up,
        abandoned = bridged.abandoned,
        frames_skipped = stats.frames_skipped,
        "call ended"
    );
    ctx.transport
        .metrics()
        .rtp_frames_skipped
        .inc_by(stats.frames_skipped);
    let mut dropped = 0;
    for (reason, n) in [
        ("malformed", stats.malformed),
        ("source", stats.wrong_source),
        ("ssrc", stats.wrong_ssrc),
    ] {
        dropped += n;
        ctx.transport
            .metrics()
            .rtp_dropped
            .with_label_values(&[reason])
            .inc_by(n);
    }
    Report {
        outcome: if bridged.abandoned {
            Outcome::Abandoned
        } else {
            ivr_end.outcome.unwrap_or(Outcome::AnsweredHuman)
        },
        agent: bridged.agent.map(Box::new),
        ivr: ivr_end.ivr.map(Box::new),
        amd: ivr_end.amd.map(Box::new),
        reason: None,
        sip_status: answer.status(),
        ring_ms,
        talk_ms,
        rtp_sent: stats.sent,
        rtp_received: stats.received,
        rtp_dropped: dropped,
        media: Some(stats),
    }
}

/// Longest Refer-To we take.
const MAX_REFER_TO: usize = 512;

/// The target of a REFER: one Refer-To with a `sip:` or `sips:` URI. An
/// attended transfer (a `Replaces` header in the URI) is not supported.
fn refer_target(m: &Message) -> Result<String, (u16, &'static str)> {
    let mut values = m.header_values("refer-to");
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err((400, "Bad Request"));
    };
    if value.len() > MAX_REFER_TO || value.chars().any(char::is_control) {
        return Err((400, "Bad Request"));
    }
    let uri = match value.find('<') {
        Some(i) => value[i + 1..].split('>').next().unwrap_or(""),
        None => value.split(';').next().unwrap_or(""),
    }
    .trim();
    let lower = uri.to_ascii_lowercase();
    if !(lower.starts_with("sip:") || lower.starts_with("sips:")) {
        return Err((416, "Unsupported URI Scheme"));
    }
    let (uri, headers) = uri.split_once('?').unwrap_or((uri, ""));
    if headers.to_ascii_lowercase().contains("replaces") {
        return Err((501, "Not Implemented"));
    }
    if crate::sip::dialog::host_port(uri).is_none() || uri.contains(char::is_whitespace) {
        return Err((400, "Bad Request"));
    }
    Ok(uri.to_owned())
}

/// A request of ours inside the dialog (NOTIFY), retransmitted over UDP
/// (Timer E, T1 doubling to T2) until a final response or Timer F.
struct PendingRequest {
    branch: String,
    request: String,
    next: tokio::time::Instant,
    interval: Duration,
    give_up: tokio::time::Instant,
}

impl PendingRequest {
    fn new(branch: String, request: String, t1: Duration, reliable: bool) -> Self {
        let now = tokio::time::Instant::now();
        let give_up = now + t1 * 64;
        Self {
            branch,
            request,
            // Over TCP the transport is reliable: no retransmission, only
            // the timeout.
            next: if reliable { give_up } else { now + t1 },
            interval: t1,
            give_up,
        }
    }
}

/// Our 2xx to a re-INVITE, until its ACK.
struct Pending2xx {
    cseq: u32,
    response: String,
    to: SocketAddr,
    next: tokio::time::Instant,
    interval: Duration,
    give_up: tokio::time::Instant,
}

/// The response to a re-INVITE or UPDATE: its offer answered with our SDP
/// (new version) and the media moved; an offerless one answered with our
/// current SDP as an offer; an offer we cannot take refused with 488.
fn renegotiate(
    dialog: &Dialog,
    local_sdp: &mut LocalSdp,
    req: &Message,
    media: Option<&watch::Sender<RemoteMedia>>,
    call_id: &str,
) -> String {
    let contact = format!(
        "Contact: <{}>\r\nContent-Type: application/sdp\r\n",
        dialog.contact
    );
    if req.body.is_empty() {
        if req.method() == Some("UPDATE") {
            // A session refresh (RFC 4028): no offer, so no answer (RFC 3311).
            return response_to(
                req,
                200,
                "OK",
                None,
                &format!("Contact: <{}>\r\n", dialog.contact),
                "",
            );
        }
        let sdp = local_sdp.reoffer();
        return response_to(req, 200, "OK", None, &contact, &sdp);
    }
    match req.body_str().map(parse_remote) {
        Some(Ok(remote)) => {
            let sdp = local_sdp.answer(&remote);
            if let Some(tx) = media {
                let _ = tx.send(remote);
            }
            tracing::info!(%call_id, direction = remote.direction.as_str(), addr = %remote.addr, "media renegotiated");
            response_to(req, 200, "OK", None, &contact, &sdp)
        }
        _ => {
            tracing::warn!(%call_id, "re-offer we cannot accept");
            response_to(req, 488, "Not Acceptable Here", None, "", "")
        }
    }
}

/// ACKs a 2xx that arrived after we canceled, then ends the dialog with BYE.
pub async fn ack_and_bye(
    ctx: &CallContext,
    dialog: &mut Dialog,
    answer: &Message,
    rx: &mut mpsc::Receiver<Inbound>,
    shutdown: &CancellationToken,
) {
    dialog.confirm(answer);
    let hop = resolve_hop(&dialog.next_hop_uri(), ctx.trunk).await;
    ctx.transport
        .send_for(&dialog.call_id.clone(), hop, &dialog.ack_2xx())
        .await;
    hang_up(ctx, dialog, rx, hop, shutdown).await;
}

/// Sends BYE to `hop` and retransmits it (Timer E, capped at T2 = 4 s)
/// until a final response or Timer F (at shutdown: at most the drain
/// budget, so the process still exits within its grace); answers one
/// Digest challenge.
async fn hang_up(
    ctx: &CallContext,
    dialog: &mut Dialog,
    rx: &mut mpsc::Receiver<Inbound>,
    hop: SocketAddr,
    shutdown: &CancellationToken,
) {
    let call_id = dialog.call_id.clone();
    let (mut branch, mut bye) = dialog.bye(None);
    let mut challenged = false;
    let t0 = tokio::time::Instant::now();
    let mut timer_f = t0 + ctx.t1 * 64;
    if shutdown.is_cancelled() {
        timer_f = timer_f.min(t0 + ctx.drain_talk.max(ctx.t1 * 4));
    }
    let mut interval = ctx.t1;
    let reliable = ctx.transport.reliable_to(hop);
    let mut next = if reliable { timer_f } else { t0 + interval };
    ctx.transport.send_for(&call_id, hop, &bye).await;
    loop {
        tokio::select! {
            inbound = rx.recv() => {
                let (m, from) = match inbound {
                    None => return,
                    Some(Inbound::Msg { msg, from }) => (msg, from),
                    Some(Inbound::Malformed { .. }) => continue,
                };
                if let Some(method) = m.method() {
                    match dialog.check_request(&m) {
                        InDialog::TagMismatch => {
                            ctx.transport.metrics().drop(DropReason::TagMismatch);
                            continue;
                        }
                        InDialog::CseqOrder | InDialog::Retransmission => {
                            ctx.transport.metrics().drop(DropReason::CseqOrder);
                            continue;
                        }
                        InDialog::Ok => {}
                    }
                    if method == "BYE" {
                        ctx.transport.send(from, &response_to(&m, 200, "OK", None, "", "")).await;
                        return;
                    }
                    continue;
                }
                let ours = m.top_branch() == Some(branch.as_str())
                    && m.cseq().is_some_and(|(_, meth)| meth == "BYE");
                if !ours {
                    // Also a late 2xx retransmission of the INVITE: harmless.
                    continue;
                }
                match m.status() {
                    Some(401 | 407) if !challenged => {
                        challenged = true;
                        let (ask, answer) = if m.status() == Some(401) {
                            ("www-authenticate", "Authorization")
                        } else {
                            ("proxy-authenticate", "Proxy-Authorization")
                        };
                        let (Some(creds), Ok(ch)) = (&ctx.credentials, Challenge::pick(m.header_values_raw(ask))) else {
                            tracing::warn!(%call_id, "bye challenged and cannot be answered");
                            return;
                        };
                        let cnonce = format!("{:016x}", fastrand::u64(..));
                        let value = ch.authorize(creds, "BYE", &dialog.bye_uri(), 1, &cnonce);
                        (branch, bye) = dialog.bye(Some((answer, value)));
                        ctx.transport.send_for(&call_id, hop, &bye).await;
                        interval = ctx.t1;
                        if !reliable {
                            next = tokio::time::Instant::now() + interval;
                        }
                    }
                    Some(c) if c >= 200 => return,
                    _ => {}
                }
            }
            _ = sleep_until(next.min(timer_f)) => {
                if tokio::time::Instant::now() >= timer_f {
                    tracing::warn!(%call_id, "no answer to BYE (timer F)");
                    return;
                }
                ctx.transport.send_for(&call_id, hop, &bye).await;
                interval = (interval * 2).min(Duration::from_secs(4));
                next += interval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer(headers: &str) -> Message {
        let raw = format!(
            "REFER sip:dialstack@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c1\r\nCSeq: 5 REFER\r\n{headers}Content-Length: 0\r\n\r\n"
        );
        Message::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn refer_to_targets_are_read_and_bad_ones_refused() {
        let ok = |h: &str| refer_target(&refer(h));
        assert_eq!(
            ok("Refer-To: <sip:sales@10.0.0.9:5070>\r\n"),
            Ok("sip:sales@10.0.0.9:5070".into())
        );
        assert_eq!(
            ok("Refer-To: \"Sales\" <sips:sales@pbx.example;transport=tls>;x=1\r\n"),
            Ok("sips:sales@pbx.example;transport=tls".into())
        );
        // The compact form.
        assert_eq!(ok("r: sip:bob@pbx\r\n"), Ok("sip:bob@pbx".into()));
        // None, two, another scheme, an attended transfer, garbage.
        assert_eq!(ok(""), Err((400, "Bad Request")));
        assert_eq!(
            ok("Refer-To: <sip:a@h>\r\nRefer-To: <sip:b@h>\r\n"),
            Err((400, "Bad Request"))
        );
        assert_eq!(
            ok("Refer-To: <sip:a@h>, <sip:b@h>\r\n"),
            Err((400, "Bad Request"))
        );
        assert_eq!(
            ok("Refer-To: <tel:+15551234567>\r\n"),
            Err((416, "Unsupported URI Scheme"))
        );
        assert_eq!(
            ok("Refer-To: <http://evil.example/x>\r\n"),
            Err((416, "Unsupported URI Scheme"))
        );
        assert_eq!(
            ok("Refer-To: <sip:bob@pbx?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>\r\n"),
            Err((501, "Not Implemented"))
        );
        assert_eq!(ok("Refer-To: <sip:>\r\n"), Err((400, "Bad Request")));
        assert_eq!(
            ok("Refer-To: <sip:a@h:notaport>\r\n"),
            Err((400, "Bad Request"))
        );
        let long = format!("Refer-To: <sip:{}@h>\r\n", "a".repeat(600));
        assert_eq!(ok(&long), Err((400, "Bad Request")));
    }
}
