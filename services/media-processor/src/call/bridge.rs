//! The agent side of an answered call (campaign modes with agents): a free
//! agent is reserved at user-service, called with auto-answer signalling
//! (`Answer-Mode: Auto`, RFC 5373, and `Call-Info: ;answer-after=0`) and
//! bridged B2BUA-style: each leg runs its own media loop with its own
//! jitter buffer, and what one leg hears is what the other sends
//! ([`BridgeIo`]).
//!
//! - An agent that does not answer within [`BridgeContext::agent_answer`]
//!   is canceled, its reservation released, and the next agent is tried.
//! - When no agent is connected within the command's `abandon_after_ms`
//!   (2 s by law) of the callee's answer, the callee hears the compliance
//!   message and is hung up: outcome `abandoned`. The message is the
//!   campaign's (`BridgeSpec::abandon_message`, rendered as soon as the
//!   first try finds no agent, so that it is ready at the deadline) or,
//!   without one, the deployment's.
//! - Either side hanging up ends both legs. The agent goes `reserved →
//!   on_call` when its leg answers and `on_call → wrap_up` when the bridge
//!   ends; a reservation that was not used is released (`available`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_contract::{AgentLeg, BridgeSpec, DialCommand, TransferLeg};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{resolve_hop, CallContext, LegOptions, Progress, Report};
use crate::rtp::stream::BridgeIo;

/// Most frames a prompt may queue on a leg (60 s).
pub const PROMPT_FRAMES: usize = 3_000;

/// How long to wait before asking for an agent again when none was free.
const RESERVE_RETRY: Duration = Duration::from_millis(150);

/// Longest wait past the deadline for the campaign's message to render;
/// after it the deployment's message is played instead.
const MESSAGE_GRACE: Duration = Duration::from_millis(1_000);

/// The campaign's compliance message being rendered.
type Rendering = JoinHandle<Option<Arc<Vec<i16>>>>;

/// An agent reserved for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedAgent {
    /// The agent (user id).
    pub id: String,
    /// Where to call them.
    pub sip_uri: String,
}

/// What to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The campaign's team.
    pub team: Option<String>,
    /// Skills with their lowest level.
    pub skills: std::collections::BTreeMap<String, u8>,
    /// The call.
    pub call_id: String,
    /// Agents already tried for this call.
    pub exclude: Vec<String>,
    /// Exactly this agent (preview).
    pub agent_id: Option<String>,
}

/// The owner of agent state (user-service), as the bridge uses it.
#[async_trait::async_trait]
pub trait AgentDesk: Send + Sync {
    /// Reserves one free matching agent; `Ok(None)` when none is free.
    async fn reserve(&self, r: &Reservation) -> anyhow::Result<Option<ReservedAgent>>;
    /// Moves a reserved or talking agent (`on_call`, `wrap_up`, or
    /// `available` to release an unused reservation).
    async fn set_state(
        &self,
        agent_id: &str,
        state: &str,
        call_id: &str,
        reason: &str,
    ) -> anyhow::Result<()>;
}

/// Counters of the bridge.
#[derive(Clone)]
pub struct BridgeMetrics {
    /// Bridged calls by how they went: `bridged`, `abandoned`, `callee_gone`.
    pub calls: prometheus::IntCounterVec,
    /// Agent legs by result: `answered`, `not_answered`.
    pub agent_legs: prometheus::IntCounterVec,
    /// The callee's wait from answer to agent (s).
    pub wait: prometheus::Histogram,
    /// Transfers asked for by agents (REFER), by result: `completed`,
    /// `refused` (target not allowed), `failed` (the target did not answer).
    pub transfers: prometheus::IntCounterVec,
}

impl BridgeMetrics {
    /// The metric definitions (register them with the service's registry).
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            calls: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dialstack_bridge_calls_total",
                    "answered calls of campaigns with agents, by how they ended: bridged, abandoned (no agent in time), callee_gone (hung up while waiting)",
                ),
                &["result"],
            )?,
            agent_legs: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dialstack_agent_legs_total",
                    "calls to agents, by result: answered, not_answered",
                ),
                &["result"],
            )?,
            wait: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "dialstack_agent_wait_seconds",
                    "an answered callee's wait until an agent is connected",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0]),
            )?,
            transfers: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dialstack_agent_transfers_total",
                    "blind transfers asked for by agents (REFER), by result: completed, refused (target not allowed), failed (target did not answer)",
                ),
                &["result"],
            )?,
        })
    }
}

/// What every bridged call shares.
pub struct BridgeContext {
    /// Agent reservations and states.
    pub desk: Arc<dyn AgentDesk>,
    /// How long an agent's phone may ring (`DIALSTACK_AGENT_ANSWER_MS`).
    pub agent_answer: Duration,
    /// The compliance message (8 kHz linear), played before an abandoned
    /// call is hung up.
    pub prompt: Arc<Vec<i16>>,
    /// Counters.
    pub metrics: BridgeMetrics,
    /// Hosts an agent may transfer a callee to besides their own phone's
    /// host (`DIALSTACK_TRANSFER_HOSTS`); anything else is refused, so a
    /// REFER cannot send a customer to an arbitrary destination.
    pub transfer_hosts: Vec<String>,
    /// Bridged calls that take a transfer from the API (`transfer`
    /// commands), by call id.
    pub transfers: Transfers,
}

/// Most transfers the API may ask for on one call while it is bridged
/// (beyond the agent leg's own limit, so that a flood of commands cannot
/// queue without bound).
const MAX_API_TRANSFERS: u32 = 8;

/// The bridged calls of this process that can be transferred through the
/// API: a `transfer` command is handed to the call's bridge as if the
/// agent's phone had sent REFER (same host rules, same limits).
#[derive(Clone, Default)]
pub struct Transfers(Arc<std::sync::Mutex<Mailboxes>>);

/// Each bridged call's transfer mailbox and how many requests the API put
/// in it.
type Mailboxes =
    std::collections::HashMap<String, (mpsc::UnboundedSender<super::TransferRequest>, u32)>;

/// What became of a transfer asked for through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiTransfer {
    /// Handed to the call's bridge (the target is checked and called there).
    Handed,
    /// No call by that id is bridged to an agent here now.
    NotBridged,
    /// The call already had [`MAX_API_TRANSFERS`] requests.
    TooMany,
}

impl Transfers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Mailboxes> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes requests for `call_id` into `tx` until the returned guard drops.
    fn register(
        &self,
        call_id: &str,
        tx: mpsc::UnboundedSender<super::TransferRequest>,
    ) -> TransferRegistration {
        self.lock().insert(call_id.to_owned(), (tx, 0));
        TransferRegistration {
            transfers: self.clone(),
            call_id: call_id.to_owned(),
        }
    }

    /// Asks the bridge of `call_id` to transfer its callee to `target`.
    pub fn request(&self, call_id: &str, target: &str) -> ApiTransfer {
        let mut all = self.lock();
        let Some((tx, asked)) = all.get_mut(call_id) else {
            return ApiTransfer::NotBridged;
        };
        if *asked >= MAX_API_TRANSFERS {
            return ApiTransfer::TooMany;
        }
        *asked += 1;
        // Nobody waits for the progress of an API transfer: the bridge logs
        // it, counts it and puts it in the CDR.
        let (status, _) = mpsc::unbounded_channel();
        let req = super::TransferRequest {
            target: target.to_owned(),
            status,
        };
        if tx.send(req).is_err() {
            return ApiTransfer::NotBridged;
        }
        ApiTransfer::Handed
    }

    /// How many calls take transfers now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes a call from [`Transfers`] when dropped.
struct TransferRegistration {
    transfers: Transfers,
    call_id: String,
}

impl Drop for TransferRegistration {
    fn drop(&mut self) {
        self.transfers.lock().remove(&self.call_id);
    }
}

/// Whether an agent whose phone is `agent_uri` may transfer to `target`:
/// the same host as the agent's phone (the agents' PBX), or a listed one.
/// Hosts compare without case; ports do not matter.
pub fn transfer_allowed(target: &str, agent_uri: &str, hosts: &[String]) -> bool {
    let host = |u: &str| crate::sip::dialog::host_port(u).map(|(h, _)| h.to_ascii_lowercase());
    let Some(t) = host(target) else {
        return false;
    };
    host(agent_uri).as_deref() == Some(t.as_str())
        || hosts.iter().any(|h| h.eq_ignore_ascii_case(&t))
}

/// How the agent side of a call ended.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BridgeEnd {
    /// The agent leg, when one was connected.
    pub agent: Option<AgentLeg>,
    /// No agent in time: the callee heard the message and was hung up.
    pub abandoned: bool,
}

/// One bridged call's agent side.
pub struct Job {
    /// The callee leg's context (the agent leg copies it).
    pub ctx: CallContext,
    /// Agents.
    pub bctx: Arc<BridgeContext>,
    /// The callee's command.
    pub cmd: DialCommand,
    /// The campaign's bridge settings.
    pub spec: BridgeSpec,
    /// The callee's audio pipes (`heard`: from the callee, `say`: to it).
    pub io: BridgeIo,
    /// When the callee answered.
    pub answered_at: Instant,
    /// Progress of the callee's call (`Bridged` goes here).
    pub progress: mpsc::UnboundedSender<Progress>,
    /// Cancel to hang up the callee (the agent hung up, or abandon).
    pub end_callee: CancellationToken,
    /// Cancelled when the callee's leg ended.
    pub callee_gone: CancellationToken,
    /// Cancelled by the bridge when an agent is connected (the callee's
    /// talk time starts).
    pub connected: CancellationToken,
    /// The process is shutting down.
    pub shutdown: CancellationToken,
}

/// The auto-answer header lines of an agent's INVITE.
pub fn auto_answer_headers(ctx: &CallContext) -> String {
    format!(
        "Answer-Mode: Auto\r\nCall-Info: <sip:{}>;answer-after=0\r\n",
        ctx.media_ip
    )
}

/// Finds, calls and bridges an agent for the callee of `job`, or abandons
/// the call when none is connected in time. (Boxed: the agent's leg runs
/// the same call code that spawns this, so the future's type must be named.)
pub fn run(job: Job) -> std::pin::Pin<Box<dyn std::future::Future<Output = BridgeEnd> + Send>> {
    Box::pin(run_job(job))
}

async fn run_job(job: Job) -> BridgeEnd {
    let call_id = job.cmd.call_id.clone();
    let deadline = job.answered_at + Duration::from_millis(job.spec.abandon_after_ms);
    let mut exclude: Vec<String> = Vec::new();
    let mut tries: u32 = 0;
    let mut message: Option<Rendering> = None;
    let end = loop {
        if job.callee_gone.is_cancelled() {
            job.bctx
                .metrics
                .calls
                .with_label_values(&["callee_gone"])
                .inc();
            break BridgeEnd::default();
        }
        if Instant::now() >= deadline {
            break abandon(&job, message.take()).await;
        }
        let want = Reservation {
            team: job.cmd.team.clone(),
            skills: job.spec.skills.clone(),
            call_id: call_id.clone(),
            exclude: exclude.clone(),
            agent_id: job.spec.agent_id.clone(),
        };
        let agent = match job.bctx.desk.reserve(&want).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                message = message.or_else(|| render_message(&job));
                wait_a_little(&job, deadline).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "agent reservation failed");
                message = message.or_else(|| render_message(&job));
                wait_a_little(&job, deadline).await;
                continue;
            }
        };
        tries += 1;
        match call_agent(&job, &agent, tries, deadline).await {
            AgentTry::Connected(leg) => {
                job.bctx.metrics.calls.with_label_values(&["bridged"]).inc();
                break BridgeEnd {
                    agent: Some(*leg),
                    abandoned: false,
                };
            }
            AgentTry::NotAnswered => {
                message = message.or_else(|| render_message(&job));
                release(&job, &agent.id).await;
                exclude.push(agent.id);
                if exclude.len() > 64 {
                    exclude.remove(0);
                }
            }
            AgentTry::Stopped => {
                message = message.or_else(|| render_message(&job));
                release(&job, &agent.id).await;
            }
        }
    };
    if let Some(m) = message {
        m.abort();
    }
    end
}

/// Starts rendering the campaign's compliance message, when it has one
/// and this process has the engines and prompts to render it.
fn render_message(job: &Job) -> Option<Rendering> {
    if job.spec.abandon_message.is_empty() {
        return None;
    }
    let Some(ictx) = job.ctx.ivr.clone() else {
        tracing::warn!(call_id = %job.cmd.call_id, "the campaign's compliance message needs the speech engines, which this process lacks: the deployment's message is used");
        return None;
    };
    let say = job.spec.abandon_message.clone();
    let cmd = job.cmd.clone();
    Some(tokio::spawn(async move {
        super::ivr::render_say(&ictx, &say, &cmd).await
    }))
}

/// Sleeps until the next reservation try, the deadline or the callee's
/// hang-up, whichever comes first.
async fn wait_a_little(job: &Job, deadline: Instant) {
    let until = (Instant::now() + RESERVE_RETRY).min(deadline);
    tokio::select! {
        _ = tokio::time::sleep_until(until.into()) => {}
        _ = job.callee_gone.cancelled() => {}
    }
}

async fn release(job: &Job, agent_id: &str) {
    if let Err(e) = job
        .bctx
        .desk
        .set_state(agent_id, "available", &job.cmd.call_id, "not_answered")
        .await
    {
        tracing::warn!(call_id = %job.cmd.call_id, %agent_id, error = %e, "releasing the agent failed (the reservation lapses)");
    }
}

/// Plays the compliance message to the callee (the campaign's when it is
/// rendered in time, else the deployment's), then hangs it up.
async fn abandon(job: &Job, message: Option<Rendering>) -> BridgeEnd {
    let call_id = &job.cmd.call_id;
    let mut campaign = false;
    let pcm = match message {
        Some(mut m) => {
            let got = tokio::select! {
                r = &mut m => r.ok().flatten(),
                _ = tokio::time::sleep(MESSAGE_GRACE) => {
                    tracing::warn!(%call_id, "the campaign's compliance message was not rendered in time: the deployment's is played");
                    m.abort();
                    None
                }
                _ = job.callee_gone.cancelled() => {
                    m.abort();
                    None
                }
            };
            campaign = got.is_some();
            got.unwrap_or_else(|| job.bctx.prompt.clone())
        }
        None => job.bctx.prompt.clone(),
    };
    job.io.say.clear();
    let frames = job.io.say.push_all(&pcm);
    tracing::info!(%call_id, frames, campaign, "no agent in time: compliance message, then hang-up");
    job.bctx
        .metrics
        .calls
        .with_label_values(&["abandoned"])
        .inc();
    // The callee's media loop plays one frame per 20 ms; a little margin
    // for the frame in flight.
    let playing = Duration::from_millis(frames as u64 * 20 + 100);
    tokio::select! {
        _ = tokio::time::sleep(playing) => {}
        _ = job.callee_gone.cancelled() => {}
    }
    job.end_callee.cancel();
    BridgeEnd {
        agent: None,
        abandoned: true,
    }
}

enum AgentTry {
    /// The agent answered; the bridge ran until one side hung up.
    Connected(Box<AgentLeg>),
    /// The agent did not answer in time (or refused).
    NotAnswered,
    /// The callee hung up, or the abandon deadline passed, before the agent answered.
    Stopped,
}

/// Calls `agent` and, when it answers, bridges it to the callee until one
/// side hangs up.
async fn call_agent(job: &Job, agent: &ReservedAgent, attempt: u32, deadline: Instant) -> AgentTry {
    let call_id = &job.cmd.call_id;
    let hop = resolve_hop(&agent.sip_uri, job.ctx.trunk).await;
    let mut ctx = job.ctx.clone();
    ctx.trunk = hop;
    ctx.credentials = None;
    let cmd = side_leg(
        &job.cmd,
        format!("{call_id}-a{attempt}"),
        job.bctx.agent_answer.as_millis() as u64,
    );
    let io = facing(&job.io);
    let (ttx, transfers) = mpsc::unbounded_channel();
    let api_transfers = ttx.clone();
    let leg = LegOptions {
        remote_uri: Some(agent.sip_uri.clone()),
        invite_headers: auto_answer_headers(&ctx),
        io: Some(io),
        transfer: Some(ttx),
    };
    let (ptx, mut prx) = mpsc::unbounded_channel();
    let hangup = CancellationToken::new();
    let shutdown = job.shutdown.clone();
    let leg_task = {
        let hangup = hangup.clone();
        tokio::spawn(async move { super::place_leg(&ctx, &cmd, leg, ptx, hangup, shutdown).await })
    };
    let invited = Instant::now();
    tracing::info!(%call_id, agent_id = %agent.id, "calling the agent");
    // Until the agent answers: the callee's hang-up or the abandon
    // deadline stops the agent's call.
    let agent_ring_ms = loop {
        tokio::select! {
            p = prx.recv() => match p {
                Some(Progress::Answered { ring_ms }) => break Some(ring_ms),
                Some(_) => continue,
                None => break None,
            },
            _ = job.callee_gone.cancelled() => {
                hangup.cancel();
                let _ = leg_task.await;
                return AgentTry::Stopped;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                hangup.cancel();
                let _ = leg_task.await;
                return AgentTry::Stopped;
            }
        }
    };
    let Some(agent_ring_ms) = agent_ring_ms else {
        // The leg ended unanswered (busy, no answer within the answer time,
        // refused).
        let report = leg_task.await.ok();
        tracing::info!(%call_id, agent_id = %agent.id, outcome = ?report.as_ref().map(|r| r.outcome), "agent did not answer");
        job.bctx
            .metrics
            .agent_legs
            .with_label_values(&["not_answered"])
            .inc();
        return AgentTry::NotAnswered;
    };
    let connected = Instant::now();
    let wait_ms = job.answered_at.elapsed().as_millis() as i64;
    job.bctx
        .metrics
        .agent_legs
        .with_label_values(&["answered"])
        .inc();
    job.bctx.metrics.wait.observe(wait_ms as f64 / 1_000.0);
    if let Err(e) = job
        .bctx
        .desk
        .set_state(&agent.id, "on_call", call_id, "bridged")
        .await
    {
        tracing::warn!(%call_id, agent_id = %agent.id, error = %e, "agent state on_call refused");
    }
    job.connected.cancel();
    let _ = job.progress.send(Progress::Bridged {
        agent_id: agent.id.clone(),
        wait_ms,
        agent_ring_ms,
    });
    tracing::info!(%call_id, agent_id = %agent.id, wait_ms, ring_ms = agent_ring_ms, since_invite_ms = invited.elapsed().as_millis() as u64, "bridged");
    let callee = Callee {
        ctx: &job.ctx,
        bctx: &job.bctx,
        cmd: &job.cmd,
        io: &job.io,
        answered: None,
        gone: &job.callee_gone,
        end: &job.end_callee,
        shutdown: &job.shutdown,
    };
    let talked = talk(&callee, agent, leg_task, hangup, transfers, api_transfers).await;
    AgentTry::Connected(Box::new(AgentLeg {
        agent_id: agent.id.clone(),
        wait_ms,
        ring_ms: agent_ring_ms,
        talk_ms: talked.agent_talk_ms(connected),
        tries: attempt - 1,
        quality: talked.quality(),
        transfer: talked.transfer,
    }))
}

/// The callee's side of a call an agent is connected to, as the talk loop
/// needs it.
struct Callee<'a> {
    ctx: &'a CallContext,
    bctx: &'a BridgeContext,
    /// The callee's command.
    cmd: &'a DialCommand,
    /// The callee's pipes.
    io: &'a BridgeIo,
    /// Cancelled once the callee answered; `None`: it has.
    answered: Option<&'a CancellationToken>,
    /// Cancelled when the callee's leg ended.
    gone: &'a CancellationToken,
    /// Cancel to hang the callee up.
    end: &'a CancellationToken,
    shutdown: &'a CancellationToken,
}

/// How the agent's part of a call went.
struct Talked {
    /// The agent leg's report.
    agent: Option<Report>,
    /// The transfer that took the callee on, if any.
    transfer: Option<TransferLeg>,
}

impl Talked {
    /// The agent's talk time: the leg's own, else since `connected`.
    fn agent_talk_ms(&self, connected: Instant) -> i64 {
        let since = connected.elapsed().as_millis() as i64;
        self.agent
            .as_ref()
            .map_or(since, |r| if r.talk_ms > 0 { r.talk_ms } else { since })
    }

    fn quality(&self) -> Option<dialstack_contract::Quality> {
        self.agent.as_ref().and_then(|r| r.quality().cloned())
    }
}

/// The agent is connected to the callee: whichever side hangs up first
/// ends the other, unless the agent hands the callee on first (the phone's
/// REFER arriving on `transfers`, or the API's through `api_transfers`,
/// registered in [`BridgeContext::transfers`] meanwhile). The agent goes
/// to `wrap_up` when their part ends.
async fn talk(
    callee: &Callee<'_>,
    agent: &ReservedAgent,
    mut leg_task: JoinHandle<Report>,
    hangup: CancellationToken,
    mut transfers: mpsc::UnboundedReceiver<super::TransferRequest>,
    api_transfers: mpsc::UnboundedSender<super::TransferRequest>,
) -> Talked {
    let call_id = &callee.cmd.call_id;
    let mut agent_report: Option<Option<Report>> = None;
    let mut pending: Option<PendingTransfer> = None;
    let mut transfer: Option<(TransferLeg, JoinHandle<Report>, CancellationToken)> = None;
    let mut transfers_tried = 0u32;
    let registration = callee.bctx.transfers.register(call_id, api_transfers);
    while transfer.is_none() {
        tokio::select! {
            r = &mut leg_task, if agent_report.is_none() => {
                agent_report = Some(r.ok());
                // A blind transfer goes on without the agent; otherwise the
                // agent's hang-up ends the call.
                if pending.is_none() {
                    callee.end.cancel();
                    break;
                }
            }
            _ = callee.gone.cancelled() => {
                hangup.cancel();
                if let Some(p) = pending.take() {
                    p.hangup.cancel();
                    let _ = p.task.await;
                    let _ = p.status.send((487, "Request Terminated".into()));
                }
                break;
            }
            req = transfers.recv(), if pending.is_none() && agent_report.is_none() => {
                let Some(req) = req else { continue };
                transfers_tried += 1;
                let ringing = callee.answered.is_some_and(|a| !a.is_cancelled());
                if ringing || !transfer_allowed(&req.target, &agent.sip_uri, &callee.bctx.transfer_hosts) || transfers_tried > MAX_TRANSFERS {
                    tracing::warn!(%call_id, agent_id = %agent.id, target = %req.target, ringing, "transfer refused");
                    callee.bctx.metrics.transfers.with_label_values(&["refused"]).inc();
                    let _ = req.status.send((403, "Forbidden".into()));
                    continue;
                }
                tracing::info!(%call_id, agent_id = %agent.id, target = %req.target, "agent transfers the call");
                pending = Some(dial_transfer(callee, req, transfers_tried));
            }
            p = async {
                match pending.as_mut() {
                    Some(p) => p.progress.recv().await,
                    None => std::future::pending().await,
                }
            }, if pending.is_some() => {
                match p {
                    Some(Progress::Answered { ring_ms }) => {
                        let Some(p) = pending.take() else { continue };
                        callee.bctx.metrics.transfers.with_label_values(&["completed"]).inc();
                        let _ = p.status.send((200, "OK".into()));
                        tracing::info!(%call_id, agent_id = %agent.id, target = %p.target, ring_ms, "transfer answered");
                        transfer = Some((
                            TransferLeg { target: p.target, ring_ms, talk_ms: 0, quality: None },
                            p.task,
                            p.hangup,
                        ));
                    }
                    Some(_) => {}
                    None => {
                        // The target's leg ended unanswered.
                        let Some(p) = pending.take() else { continue };
                        let report = p.task.await.ok();
                        let code = report.as_ref().and_then(|r| r.sip_status).filter(|c| *c >= 300).unwrap_or(480);
                        tracing::info!(%call_id, agent_id = %agent.id, target = %p.target, code, "transfer target did not answer");
                        callee.bctx.metrics.transfers.with_label_values(&["failed"]).inc();
                        let _ = p.status.send((code, "Transfer Failed".into()));
                        if agent_report.is_some() {
                            // The agent already left: nobody is there for the callee.
                            callee.end.cancel();
                            break;
                        }
                    }
                }
            }
        }
    }
    drop(registration);
    let mut transfer_leg = None;
    if let Some((mut leg, mut task, target_hangup)) = transfer {
        // The agent's part is over (a phone usually hangs up itself on the
        // final NOTIFY; we do not wait for it).
        hangup.cancel();
        if agent_report.is_none() {
            agent_report = Some((&mut leg_task).await.ok());
        }
        set_wrap_up(callee, &agent.id).await;
        let since = Instant::now();
        let report = tokio::select! {
            r = &mut task => {
                callee.end.cancel();
                r.ok()
            }
            _ = callee.gone.cancelled() => {
                target_hangup.cancel();
                task.await.ok()
            }
        };
        leg.talk_ms = report
            .as_ref()
            .map_or(0, |r| r.talk_ms)
            .max(since.elapsed().as_millis() as i64);
        leg.quality = report.as_ref().and_then(|r| r.quality().cloned());
        transfer_leg = Some(leg);
    } else {
        if agent_report.is_none() {
            agent_report = Some((&mut leg_task).await.ok());
        }
        set_wrap_up(callee, &agent.id).await;
    }
    Talked {
        agent: agent_report.flatten(),
        transfer: transfer_leg,
    }
}

/// The command of a leg beside the callee's (an agent, a transfer target):
/// the callee's command under its own Call-ID, ringing at most `ring_ms`
/// (within the contract's limits), with no recording, bridge, IVR or
/// machine detection of its own.
fn side_leg(cmd: &DialCommand, call_id: String, ring_ms: u64) -> DialCommand {
    DialCommand {
        call_id,
        ring_timeout_ms: ring_ms.clamp(
            dialstack_contract::MIN_RING_TIMEOUT_MS,
            dialstack_contract::MAX_RING_TIMEOUT_MS,
        ),
        record: false,
        bridge: None,
        ivr: None,
        amd: None,
        transcribe: false,
        fields: Default::default(),
        ..cmd.clone()
    }
}

/// The pipes of a leg facing the callee: it hears what the callee says
/// (the callee's `heard`) and speaks into the callee's `say`.
fn facing(callee: &BridgeIo) -> BridgeIo {
    BridgeIo {
        heard: callee.say.clone(),
        say: callee.heard.clone(),
        keys: None,
    }
}

/// Most transfers one agent leg may ask for (refused ones included).
const MAX_TRANSFERS: u32 = 8;

/// How long a transfer target's phone may ring.
const TRANSFER_RING_MS: u64 = 30_000;

/// The agent's bridge ended (hang-up or transfer): `wrap_up`.
async fn set_wrap_up(callee: &Callee<'_>, agent_id: &str) {
    let call_id = &callee.cmd.call_id;
    if let Err(e) = callee
        .bctx
        .desk
        .set_state(agent_id, "wrap_up", call_id, "hangup")
        .await
    {
        tracing::warn!(%call_id, %agent_id, error = %e, "agent state wrap_up refused");
    }
}

/// A transfer target being called.
struct PendingTransfer {
    target: String,
    task: JoinHandle<Report>,
    progress: mpsc::UnboundedReceiver<Progress>,
    hangup: CancellationToken,
    status: mpsc::UnboundedSender<(u16, String)>,
}

/// Calls the target of an agent's REFER as a new leg of the callee's
/// bridge: once it answers it hears the callee and the callee hears it
/// (its media starts with its answer, so until then the agent's leg is
/// alone on the callee's pipes).
fn dial_transfer(callee: &Callee<'_>, req: super::TransferRequest, n: u32) -> PendingTransfer {
    let mut ctx = callee.ctx.clone();
    ctx.credentials = None;
    let cmd = side_leg(
        callee.cmd,
        format!("{}-x{n}", callee.cmd.call_id),
        TRANSFER_RING_MS,
    );
    let leg = LegOptions {
        remote_uri: Some(req.target.clone()),
        invite_headers: String::new(),
        io: Some(facing(callee.io)),
        transfer: None,
    };
    let (ptx, progress) = mpsc::unbounded_channel();
    let hangup = CancellationToken::new();
    let shutdown = callee.shutdown.clone();
    let task = {
        let hangup = hangup.clone();
        let target = req.target.clone();
        tokio::spawn(async move {
            ctx.trunk = resolve_hop(&target, ctx.trunk).await;
            super::place_leg(&ctx, &cmd, leg, ptx, hangup, shutdown).await
        })
    };
    PendingTransfer {
        target: req.target,
        task,
        progress,
        hangup,
        status: req.status,
    }
}

/// Preview dialing: the agent who asked for the lead is called first; once
/// they answer, the customer is called and bridged to them. The customer's
/// call is the command's call (its events and report); the agent leg is
/// in [`Report::agent`]. An agent who is not free or does not answer means
/// the customer is never dialed (`canceled`).
pub async fn run_preview(
    ctx: &CallContext,
    bctx: &Arc<BridgeContext>,
    cmd: &DialCommand,
    agent_id: &str,
    progress: mpsc::UnboundedSender<Progress>,
    hangup: CancellationToken,
    shutdown: CancellationToken,
) -> Report {
    let started = Instant::now();
    let call_id = &cmd.call_id;
    let skipped = |why: &str| {
        tracing::info!(%call_id, %agent_id, why, "preview call not placed");
        Report::unanswered(dialstack_contract::Outcome::Canceled, None, None, started)
    };
    let want = Reservation {
        team: cmd.team.clone(),
        skills: Default::default(),
        call_id: call_id.clone(),
        exclude: Vec::new(),
        agent_id: Some(agent_id.to_owned()),
    };
    let agent = match bctx.desk.reserve(&want).await {
        Ok(Some(a)) => a,
        Ok(None) => return skipped("agent not available"),
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "agent reservation failed");
            return skipped("reservation failed");
        }
    };
    // Agent leg: hears what the customer says (pipe `to_agent`), speaks
    // into `to_customer`.
    let to_agent = crate::rtp::stream::AudioPipe::new(crate::rtp::stream::LIVE_FRAMES);
    let to_customer = crate::rtp::stream::AudioPipe::new(PROMPT_FRAMES);
    let hop = resolve_hop(&agent.sip_uri, ctx.trunk).await;
    let mut actx = ctx.clone();
    actx.trunk = hop;
    actx.credentials = None;
    let acmd = side_leg(
        cmd,
        format!("{call_id}-a1"),
        bctx.agent_answer.as_millis() as u64,
    );
    let (ttx, transfers) = mpsc::unbounded_channel();
    let leg = LegOptions {
        remote_uri: Some(agent.sip_uri.clone()),
        invite_headers: auto_answer_headers(&actx),
        io: Some(BridgeIo {
            heard: to_customer.clone(),
            say: to_agent.clone(),
            keys: None,
        }),
        // Once the customer answered, the agent may hand them on (REFER
        // or the API), as on a bridged call.
        transfer: Some(ttx.clone()),
    };
    let (atx, mut arx) = mpsc::unbounded_channel();
    let agent_hangup = CancellationToken::new();
    let mut agent_task = {
        let hangup = agent_hangup.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move { super::place_leg(&actx, &acmd, leg, atx, hangup, shutdown).await },
        )
    };
    let agent_ring_ms = loop {
        tokio::select! {
            p = arx.recv() => match p {
                Some(Progress::Answered { ring_ms }) => break Some(ring_ms),
                Some(_) => continue,
                None => break None,
            },
            _ = hangup.cancelled() => {
                agent_hangup.cancel();
                let _ = (&mut agent_task).await;
                break None;
            }
        }
    };
    let Some(agent_ring_ms) = agent_ring_ms else {
        let _ = agent_task.await;
        if let Err(e) = bctx
            .desk
            .set_state(&agent.id, "available", call_id, "not_answered")
            .await
        {
            tracing::warn!(%call_id, error = %e, "releasing the agent failed");
        }
        return skipped("agent did not answer");
    };
    let connected = Instant::now();
    if let Err(e) = bctx
        .desk
        .set_state(&agent.id, "on_call", call_id, "preview")
        .await
    {
        tracing::warn!(%call_id, error = %e, "agent state on_call refused");
    }
    // The customer's call, relayed to the agent; the agent hanging up ends
    // it, and the customer hanging up ends the agent's leg.
    let customer_io = BridgeIo {
        heard: to_agent,
        say: to_customer,
        keys: None,
    };
    let customer_hangup = hangup.child_token();
    let customer_answered = CancellationToken::new();
    let customer_gone = CancellationToken::new();
    let (ctx_tx, mut ctx_rx) = mpsc::unbounded_channel();
    let forward = {
        let progress = progress.clone();
        let agent_id = agent.id.clone();
        let answered = customer_answered.clone();
        tokio::spawn(async move {
            while let Some(p) = ctx_rx.recv().await {
                let is_answer = matches!(p, Progress::Answered { .. });
                let _ = progress.send(p);
                if is_answer {
                    answered.cancel();
                    let _ = progress.send(Progress::Bridged {
                        agent_id: agent_id.clone(),
                        wait_ms: 0,
                        agent_ring_ms,
                    });
                }
            }
        })
    };
    let customer = LegOptions {
        io: Some(customer_io.clone()),
        ..LegOptions::default()
    };
    let call = async {
        let r = super::place_leg(
            ctx,
            cmd,
            customer,
            ctx_tx,
            customer_hangup.clone(),
            shutdown.clone(),
        )
        .await;
        customer_gone.cancel();
        r
    };
    let callee = Callee {
        ctx,
        bctx,
        cmd,
        io: &customer_io,
        answered: Some(&customer_answered),
        gone: &customer_gone,
        end: &customer_hangup,
        shutdown: &shutdown,
    };
    let (mut report, talked) = tokio::join!(
        call,
        talk(&callee, &agent, agent_task, agent_hangup, transfers, ttx)
    );
    let _ = forward.await;
    report.agent = Some(Box::new(AgentLeg {
        agent_id: agent.id.clone(),
        wait_ms: 0,
        ring_ms: agent_ring_ms,
        talk_ms: talked.agent_talk_ms(connected),
        tries: 0,
        quality: talked.quality(),
        transfer: talked.transfer,
    }));
    report
}

/// The built-in compliance message when no recording is configured: three
/// short chimes (660 Hz then 880 Hz), 1.5 s in all, at 8 kHz. Operators
/// set a recorded message with `DIALSTACK_ABANDON_PROMPT` (a WAV file).
pub fn builtin_prompt() -> Vec<i16> {
    let mut out = Vec::with_capacity(12_000);
    for freq in [660.0f64, 880.0, 660.0] {
        for n in 0..2_400 {
            let t = n as f64 / 8_000.0;
            // 10 ms fade in and out, so the chime does not click.
            let env = (n.min(2_399 - n) as f64 / 80.0).min(1.0);
            out.push((env * 8_000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16);
        }
        out.extend(std::iter::repeat_n(0i16, 1_600));
    }
    out
}

/// Reads a WAV file of 16-bit linear PCM, mono, 8 kHz (the format a
/// compliance recording must be delivered in); errors name what is wrong.
pub fn read_wav(bytes: &[u8]) -> Result<Vec<i16>, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body_start = pos + 8;
        let body_end = body_start
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or("a chunk runs past the end of the file")?;
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err("fmt chunk too short".into());
                }
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                format = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            b"data" => {
                let Some((fmt, channels, rate, bits)) = format else {
                    return Err("data before fmt".into());
                };
                if fmt != 1 || channels != 1 || rate != 8_000 || bits != 16 {
                    return Err(format!(
                        "must be PCM mono 8000 Hz 16-bit (found format {fmt}, {channels} channels, {rate} Hz, {bits} bits)"
                    ));
                }
                if body.len() > PROMPT_FRAMES * 320 {
                    return Err("longer than 60 s".into());
                }
                return Ok(body
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect());
            }
            _ => {}
        }
        pos = body_end + (len & 1);
    }
    Err("no data chunk".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        let data_len = (samples.len() * 2) as u32;
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(36 + data_len).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&(rate * 2).to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&16u16.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            v.extend_from_slice(&s.to_le_bytes());
        }
        v
    }

    #[test]
    fn wav_prompts_are_read_and_bad_ones_named() {
        assert_eq!(
            read_wav(&wav(8_000, 1, &[1, -2, 3])).unwrap(),
            vec![1, -2, 3]
        );
        assert!(read_wav(&wav(16_000, 1, &[1]))
            .unwrap_err()
            .contains("16000 Hz"));
        assert!(read_wav(&wav(8_000, 2, &[1, 2]))
            .unwrap_err()
            .contains("2 channels"));
        assert!(read_wav(b"RIFF\x00\x00\x00\x00WAVE")
            .unwrap_err()
            .contains("no data"));
        assert!(read_wav(b"garbage").is_err());
        // A chunk length that lies is refused, not read past the end.
        let mut lying = wav(8_000, 1, &[1, 2, 3]);
        let n = lying.len();
        lying[n - 10..n - 6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_wav(&lying).is_err());
        for cut in 0..44 {
            let _ = read_wav(&wav(8_000, 1, &[5; 10])[..cut]);
        }
    }

    #[test]
    fn the_builtin_prompt_is_audible_and_short() {
        let p = builtin_prompt();
        assert_eq!(p.len(), 3 * 4_000);
        let loud = p.iter().filter(|s| s.unsigned_abs() > 4_000).count();
        assert!(loud > 3_000, "{loud}");
    }

    use crate::rtp::stream::{AudioPipe, LIVE_FRAMES};

    #[test]
    fn api_transfers_reach_only_bridged_calls_and_are_bounded() {
        let transfers = Transfers::default();
        assert_eq!(transfers.request("c1", "sip:a@h"), ApiTransfer::NotBridged);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let registration = transfers.register("c1", tx);
        assert_eq!(transfers.request("c2", "sip:a@h"), ApiTransfer::NotBridged);
        for i in 0..MAX_API_TRANSFERS {
            assert_eq!(
                transfers.request("c1", &format!("sip:{i}@h")),
                ApiTransfer::Handed
            );
        }
        // A flood of commands for one call stops at the limit.
        assert_eq!(transfers.request("c1", "sip:x@h"), ApiTransfer::TooMany);
        let first = rx.try_recv().unwrap();
        assert_eq!(first.target, "sip:0@h");
        // Nobody listens to an API transfer's progress; sending it is harmless.
        assert!(first.status.send((200, "OK".into())).is_err());
        // The bridge ended: the call is gone from the registry.
        drop(registration);
        assert!(transfers.is_empty());
        assert_eq!(transfers.request("c1", "sip:a@h"), ApiTransfer::NotBridged);
        // A bridge whose loop already ended (receiver dropped) takes nothing.
        let (tx, rx) = mpsc::unbounded_channel();
        let _r = transfers.register("c3", tx);
        drop(rx);
        assert_eq!(transfers.request("c3", "sip:a@h"), ApiTransfer::NotBridged);
    }

    #[test]
    fn transfers_stay_on_the_agents_pbx_or_listed_hosts() {
        let listed = vec!["sales.example".to_owned(), "10.1.2.3".to_owned()];
        let agent = "sip:ag1@PBX.example:5070";
        // The agent's own PBX, any user or port, any case.
        assert!(transfer_allowed("sip:sales@pbx.example", agent, &[]));
        assert!(transfer_allowed(
            "sips:2001@pbx.EXAMPLE:5061;transport=tls",
            agent,
            &[]
        ));
        // Listed hosts.
        assert!(transfer_allowed("sip:q@Sales.Example", agent, &listed));
        assert!(transfer_allowed("sip:q@10.1.2.3:5080", agent, &listed));
        // Anything else: a lookalike, a suffix, a premium-rate gateway, garbage.
        assert!(!transfer_allowed("sip:x@pbx.example.evil", agent, &listed));
        assert!(!transfer_allowed("sip:x@evilsales.example", agent, &listed));
        assert!(!transfer_allowed(
            "sip:+19005550100@198.51.100.7",
            agent,
            &listed
        ));
        assert!(!transfer_allowed("sip:", agent, &listed));
        assert!(!transfer_allowed("sip:x@h:port", agent, &listed));
    }

    #[test]
    fn pipes_keep_live_audio_short_and_prompts_whole() {
        let pipe = AudioPipe::new(PROMPT_FRAMES);
        for i in 0..10 {
            pipe.push_live(&[i; 160]);
        }
        assert_eq!(pipe.len(), LIVE_FRAMES);
        assert_eq!(pipe.pop().unwrap()[0], 7);
        pipe.clear();
        assert_eq!(pipe.push_all(&vec![1i16; 160 * 5 + 1]), 6);
        assert_eq!(pipe.len(), 6);
        let small = AudioPipe::new(2);
        assert_eq!(small.push_all(&[1i16; 1_000]), 2);
    }
}
