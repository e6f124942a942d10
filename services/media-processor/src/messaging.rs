//! The commands consumer: `dial` (validate at the edge, hold a call slot,
//! claim the attempt, record the call, place it, report every step through
//! the outbox) and `hangup`; and the heartbeat that keeps the leases of live
//! calls on task-scheduler.
//!
//! Dial once: the claim is made only once a call slot is held, so a lease
//! never runs while the dial waits; while the call lives its lease is
//! renewed every third of the lease ([`DEFAULT_LEASE`] unless
//! `DIALSTACK_LEASE_SECS` says otherwise), and after it ended until
//! task-scheduler has taken in its `call.completed` (the heartbeat's answer
//! no longer lists the attempt as held) or, from a scheduler that does not
//! say, until the broker has confirmed the event: while the events broker
//! is away the outcome waits in the outbox, and then in the scheduler's
//! queue, and the lease must not run out under it. Not past
//! [`SETTLE_LIMIT`] after the broker confirmed it, so that an event lost
//! downstream still lets the reaper resolve the attempt. If this process
//! dies, the leases run out and task-scheduler resolves the attempts as
//! `failed/media_lost` without ever redialing them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialstack_common::bus::{Delivery, HandleError, Handler};
use dialstack_common::db::OutboxRelay;
use dialstack_common::events::CloudEvent;
use dialstack_contract::{
    types, CallAnswered, CallCompleted, CallDialing, CallEvent, CallRef, CallRinging, DialCommand,
    HangupCommand, TransferCommand,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::{place_call, CallContext, Progress};
use crate::db::CallLog;
use crate::scheduler_client::{ClaimResult, SchedulerClient};

/// How long a claim holds without a heartbeat, by default
/// (`DIALSTACK_LEASE_SECS`); live calls renew theirs every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Longest an ended call's lease is renewed after the broker confirmed its
/// `call.completed` while task-scheduler still holds the attempt open (the
/// event waits in a queue, or was lost on the way).
pub const SETTLE_LIMIT: Duration = Duration::from_secs(600);

/// The calls this instance is placing now, by call id, and the hang-ups
/// that arrived before their call started (bounded).
#[derive(Clone, Default)]
pub struct LiveCalls(Arc<Mutex<Live>>);

#[derive(Default)]
struct Live {
    calls: HashMap<String, LiveCall>,
    early_hangups: std::collections::VecDeque<String>,
    /// (call id, placer) of calls whose row could not be written for sure
    /// (the database did not answer), for the next delivery of their dial.
    unsure_records: std::collections::VecDeque<(String, String)>,
}

/// Hang-ups remembered for calls not started yet.
const EARLY_HANGUPS: usize = 4_096;
/// Unsure call rows remembered for their dial's next delivery.
const UNSURE_RECORDS: usize = 4_096;

#[derive(Clone)]
struct LiveCall {
    attempt_id: String,
    hangup: CancellationToken,
    /// Once the call ended: the outbox row of its `call.completed`.
    settling: Option<String>,
    /// When the broker confirmed that row (the call's outcome is out).
    confirmed: Option<Instant>,
}

impl LiveCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `call_id` for a delivery of its dial that holds the claim:
    /// from now on its lease is renewed and a hang-up reaches it. `None`
    /// when the call is already here (another delivery of the same dial is
    /// placing it, or it ended and is settling).
    fn reserve(&self, call_id: &str, attempt_id: &str) -> Option<CancellationToken> {
        let mut live = self.lock();
        if live.calls.contains_key(call_id) {
            return None;
        }
        let hangup = CancellationToken::new();
        live.calls.insert(
            call_id.to_owned(),
            LiveCall {
                attempt_id: attempt_id.to_owned(),
                hangup: hangup.clone(),
                settling: None,
                confirmed: None,
            },
        );
        Some(hangup)
    }

    /// The placer to write `call_id`'s row with: the one of an earlier
    /// delivery whose write was left unsure (taken), or `fresh`.
    fn placer_for(&self, call_id: &str, fresh: String) -> String {
        let mut live = self.lock();
        match live.unsure_records.iter().position(|(c, _)| c == call_id) {
            Some(i) => live.unsure_records.remove(i).map_or(fresh, |(_, p)| p),
            None => fresh,
        }
    }

    /// Gives back a reservation whose call will not be placed by this
    /// delivery: its lease is no longer renewed (a settling call is never
    /// given back). `unsure`: the placer whose write of the call's row may
    /// or may not have committed, for the dial's next delivery to write
    /// with, so that a row that did commit is known for its own. `hung_up`:
    /// a hang-up reached the reservation, kept for the next delivery. Both
    /// lists are bounded (the oldest go first).
    fn give_back(&self, call_id: &str, unsure: Option<String>, hung_up: bool) {
        let mut live = self.lock();
        if live
            .calls
            .get(call_id)
            .is_some_and(|c| c.settling.is_none())
        {
            live.calls.remove(call_id);
        }
        if let Some(placer) = unsure {
            if live.unsure_records.len() >= UNSURE_RECORDS {
                live.unsure_records.pop_front();
            }
            live.unsure_records.push_back((call_id.to_owned(), placer));
        }
        if hung_up {
            if live.early_hangups.len() >= EARLY_HANGUPS {
                live.early_hangups.pop_front();
            }
            live.early_hangups.push_back(call_id.to_owned());
        }
    }

    /// The call ended and its `call.completed` is the outbox row `event_id`
    /// (`None`: it could not be stored): its lease is kept until the broker
    /// has the event.
    fn settle(&self, call_id: &str, event_id: Option<String>) {
        let mut live = self.lock();
        match event_id {
            Some(id) => {
                if let Some(c) = live.calls.get_mut(call_id) {
                    c.settling = Some(id);
                }
            }
            None => {
                live.calls.remove(call_id);
            }
        }
    }

    /// Marks ended calls whose `call.completed` the broker has (at `now`).
    fn confirmed<'a>(&self, call_ids: impl Iterator<Item = &'a str>, now: Instant) {
        let mut live = self.lock();
        for c in call_ids {
            if let Some(c) = live.calls.get_mut(c) {
                c.confirmed.get_or_insert(now);
            }
        }
    }

    /// Forgets ended calls whose outcome the broker has and that no longer
    /// need their lease: task-scheduler does not hold the attempt any more
    /// (`held`; `None`: it did not say, so the broker's confirmation is
    /// enough), or [`SETTLE_LIMIT`] has passed since the confirmation.
    /// Returns how many were forgotten.
    fn forget_settled(&self, held: Option<&HashSet<String>>, now: Instant) -> usize {
        let mut live = self.lock();
        let before = live.calls.len();
        live.calls.retain(|_, c| {
            let Some(at) = c.confirmed else {
                return true;
            };
            let still_held = held.is_some_and(|h| h.contains(&c.attempt_id));
            still_held && now.duration_since(at) < SETTLE_LIMIT
        });
        before - live.calls.len()
    }

    /// Ended calls whose `call.completed` may still be in the outbox: (call
    /// id, outbox row id).
    fn settling(&self) -> Vec<(String, String)> {
        self.lock()
            .calls
            .iter()
            .filter(|(_, c)| c.confirmed.is_none())
            .filter_map(|(call, c)| c.settling.clone().map(|e| (call.clone(), e)))
            .collect()
    }

    /// Ends `call_id` if it lives here (`true`, also for a call that just
    /// ended); otherwise remembers the hang-up for a dial of that call still
    /// on its way (`false`).
    pub fn hang_up(&self, call_id: &str) -> bool {
        let mut live = self.lock();
        if let Some(c) = live.calls.get(call_id) {
            c.hangup.cancel();
            return true;
        }
        if live.early_hangups.len() >= EARLY_HANGUPS {
            live.early_hangups.pop_front();
        }
        live.early_hangups.push_back(call_id.to_owned());
        false
    }

    /// Whether a hang-up for `call_id` arrived before its call started
    /// (forgotten once asked).
    fn hung_up_early(&self, call_id: &str) -> bool {
        let mut live = self.lock();
        match live.early_hangups.iter().position(|c| c == call_id) {
            Some(i) => {
                live.early_hangups.remove(i);
                true
            }
            None => false,
        }
    }

    /// Attempt ids of the live calls and of the ended ones still settling:
    /// the leases to renew.
    pub fn attempts(&self) -> Vec<String> {
        self.lock()
            .calls
            .values()
            .map(|c| c.attempt_id.clone())
            .collect()
    }

    /// How many calls live (in progress, not ended).
    pub fn len(&self) -> usize {
        self.lock()
            .calls
            .values()
            .filter(|c| c.settling.is_none())
            .count()
    }

    /// Whether none lives.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Consumes `dial`, `hangup` and `transfer` commands (the last two
/// addressed to this instance, or the plain `hangup` of an older
/// task-scheduler).
pub struct CommandHandler {
    /// Where calls go.
    pub ctx: Arc<CallContext>,
    /// Claims.
    pub client: Arc<SchedulerClient>,
    /// This instance's claimer id.
    pub claimer: String,
    /// Calls and outbox, group-committed.
    pub log: CallLog,
    /// Woken after each event.
    pub relay: OutboxRelay,
    /// Calls in progress (drained at shutdown before the SIP edge stops).
    pub calls: TaskTracker,
    /// Caps calls in progress on this instance.
    pub limit: Arc<Semaphore>,
    /// Root token.
    pub shutdown: CancellationToken,
    /// Calls in progress (gauge).
    pub active: prometheus::IntGauge,
    /// Live calls, for hang-up and heartbeats.
    pub live: LiveCalls,
    /// Claim lease.
    pub lease: Duration,
    /// Whether the trunk answers (no claims while it does not).
    pub trunk: crate::sip::keepalive::TrunkHealth,
}

#[async_trait::async_trait]
impl Handler for CommandHandler {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        match ev.ty.as_str() {
            types::DIAL => self.dial(&ev).await,
            types::HANGUP => {
                let cmd: HangupCommand = ev
                    .data_as()
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                cmd.validate()
                    .map_err(|e| HandleError::Permanent(format!("hangup: {e}")))?;
                let here = self.live.hang_up(&cmd.call_id);
                tracing::info!(call_id = %cmd.call_id, here, "hang-up command");
                Ok(())
            }
            types::TRANSFER => {
                let cmd: TransferCommand = ev
                    .data_as()
                    .map_err(|e| HandleError::Permanent(e.to_string()))?;
                cmd.validate()
                    .map_err(|e| HandleError::Permanent(format!("transfer: {e}")))?;
                let result = match &self.ctx.bridge {
                    Some(b) => b.transfers.request(&cmd.call_id, &cmd.target),
                    None => crate::call::bridge::ApiTransfer::NotBridged,
                };
                match result {
                    crate::call::bridge::ApiTransfer::Handed => {
                        tracing::info!(call_id = %cmd.call_id, target = %cmd.target, by = ?cmd.requested_by, "transfer command")
                    }
                    other => {
                        tracing::warn!(call_id = %cmd.call_id, target = %cmd.target, by = ?cmd.requested_by, result = ?other, "transfer command not taken")
                    }
                }
                Ok(())
            }
            other => {
                tracing::debug!(ty = %other, "command ignored");
                Ok(())
            }
        }
    }
}

impl CommandHandler {
    async fn dial(&self, ev: &CloudEvent) -> Result<(), HandleError> {
        let cmd: DialCommand = ev
            .data_as()
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        cmd.validate().map_err(|e| {
            tracing::warn!(field = e.field, reason = %e.reason, "dial command refused at the edge");
            HandleError::Permanent(format!("dial: {e}"))
        })?;
        // Held until the call is spawned: the drain at shutdown waits for it,
        // so the SIP edge never stops under a call about to start.
        let _in_flight = self.calls.token();
        if self.shutdown.is_cancelled() {
            return Err(HandleError::Transient("shutting down".into()));
        }
        // A trunk that answers, then a slot, then the claim: a lease never
        // runs while we wait, and dials wait in the channel while the trunk
        // is down.
        if !self.trunk.wait_up(&self.shutdown).await {
            return Err(HandleError::Transient("shutting down".into()));
        }
        let permit = tokio::select! {
            p = self.limit.clone().acquire_owned() => p.map_err(|_| HandleError::Transient("shutting down".into()))?,
            _ = self.shutdown.cancelled() => return Err(HandleError::Transient("shutting down".into())),
        };
        match self.claim(&cmd).await? {
            ClaimResult::Granted => {}
            ClaimResult::Refused(why) => {
                tracing::info!(call_id = %cmd.call_id, attempt_id = %cmd.attempt_id, %why, "attempt not claimed, not dialing");
                return Ok(());
            }
        }
        // Held from the claim on: the lease is renewed while the call's row
        // is written, however long the database takes. Given back if this
        // handler returns or is dropped before the call is handed on.
        let Some(hangup) = self.live.reserve(&cmd.call_id, &cmd.attempt_id) else {
            tracing::info!(call_id = %cmd.call_id, "dial redelivered for a call in hand here, dropped");
            return Ok(());
        };
        let mut reservation = Reservation {
            live: self.live.clone(),
            call_id: cmd.call_id.clone(),
            hangup: hangup.clone(),
            placer: None,
            handed_on: false,
        };
        let placer = self
            .live
            .placer_for(&cmd.call_id, uuid::Uuid::now_v7().to_string());
        reservation.placer = Some(placer.clone());
        if !self.record(&cmd, &placer).await? {
            // Another delivery's row: nothing unsure to remember.
            reservation.placer = None;
            tracing::info!(call_id = %cmd.call_id, "dial redelivered for a call already placed, dropped");
            return Ok(());
        }
        let hung_up = self.live.hung_up_early(&cmd.call_id) || hangup.is_cancelled();
        if self.shutdown.is_cancelled() || hung_up {
            // Claimed but not dialed: nobody's phone rings for a process on
            // its way out, or for a call already hung up; the attempt ends
            // as canceled.
            tracing::info!(call_id = %cmd.call_id, hung_up, "not dialing a claimed attempt");
            let call = CallRef {
                call_id: cmd.call_id.clone(),
                attempt_id: cmd.attempt_id.clone(),
                campaign_id: cmd.campaign_id.clone(),
                phone: cmd.phone.clone(),
                at_ms: dialstack_common::now_ms(),
                team: cmd.team.clone(),
            };
            let done = CallCompleted::unanswered(call, dialstack_contract::Outcome::Canceled, None);
            let stored = emit(&self.log, &self.relay, &CallEvent::Completed(done)).await;
            // Claimed: its lease is kept until the outcome is out.
            self.live.settle(&cmd.call_id, stored);
            reservation.handed_on = true;
            return Ok(());
        }
        reservation.handed_on = true;
        let ctx = self.ctx.clone();
        let log = self.log.clone();
        let relay = self.relay.clone();
        let shutdown = self.shutdown.clone();
        let active = self.active.clone();
        let live = self.live.clone();
        self.calls.spawn(async move {
            let _permit = permit;
            active.inc();
            let call_id = cmd.call_id.clone();
            let completed = run_call(ctx, cmd, log, relay, hangup, shutdown).await;
            live.settle(&call_id, completed);
            active.dec();
        });
        Ok(())
    }
}

/// A call reserved by one delivery of its dial. Dropped before it is
/// handed on (to the call's task, or settled), whether the handler returned
/// early or was itself dropped (a consumer abandoning its handlers), it
/// gives the call back ([`LiveCalls::give_back`]): no lease is renewed
/// forever for a call nobody will place, and neither an unsure row nor a
/// hang-up is forgotten.
struct Reservation {
    live: LiveCalls,
    call_id: String,
    hangup: CancellationToken,
    /// The placer of a write of the call's row that may have committed.
    placer: Option<String>,
    handed_on: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.handed_on {
            self.live.give_back(
                &self.call_id,
                self.placer.take(),
                self.hangup.is_cancelled(),
            );
        }
    }
}

/// How long a claim, and then the call's row, are retried while
/// task-scheduler or the database does not answer (a restart, an outage)
/// before the dial goes back to the channel.
const CLAIM_PATIENCE: Duration = Duration::from_secs(120);

impl CommandHandler {
    /// Claims the attempt of `cmd`. A scheduler that does not answer is not
    /// the command's fault: the claim is retried here (the claim is
    /// idempotent for this claimer) rather than spending the command's
    /// deliveries, which would dead-letter a dial after a short outage.
    async fn claim(&self, cmd: &DialCommand) -> Result<ClaimResult, HandleError> {
        let lease_ms = self.lease.as_millis() as i64;
        self.patiently(cmd, "claim", || {
            self.client.claim(&cmd.attempt_id, &self.claimer, lease_ms)
        })
        .await
    }

    /// Writes the row of `cmd`'s call for `placer`; whether it is ours to
    /// place (see [`CallLog::record_call`]). A database that does not
    /// answer is retried here with the same placer, so that a write that
    /// committed although its answer was lost is recognised as ours rather
    /// than taken for a redelivered dial (which would leave the claimed
    /// attempt to the reaper as `media_lost`).
    async fn record(&self, cmd: &DialCommand, placer: &str) -> Result<bool, HandleError> {
        self.patiently(cmd, "record the call", || {
            self.log
                .record_call(&cmd.call_id, &cmd.attempt_id, &cmd.campaign_id, placer)
        })
        .await
    }

    /// Runs `step` for `cmd` until it succeeds, backing off, for at most
    /// [`CLAIM_PATIENCE`] or until shutdown; then the dial goes back to the
    /// channel (a transient error).
    async fn patiently<T, E, F, Fut>(
        &self,
        cmd: &DialCommand,
        what: &str,
        mut step: F,
    ) -> Result<T, HandleError>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let deadline = tokio::time::Instant::now() + CLAIM_PATIENCE;
        let mut tries = 0u32;
        loop {
            let e = match step().await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            tries += 1;
            if tokio::time::Instant::now() >= deadline {
                return Err(HandleError::Transient(format!("{what}: {e}")));
            }
            tracing::warn!(call_id = %cmd.call_id, attempt_id = %cmd.attempt_id, error = %e, tries, "{what} failed, retrying");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200 << tries.min(4))) => {}
                _ = self.shutdown.cancelled() => {
                    return Err(HandleError::Transient("shutting down".into()))
                }
            }
        }
    }
}

/// Stores `event` in the outbox; returns its outbox row's id, `None` if it
/// could not be stored.
async fn emit(log: &CallLog, relay: &OutboxRelay, event: &CallEvent) -> Option<String> {
    // An event that cannot be stored is retried: a lost call.completed would
    // leave the attempt to the reaper. The same write (one event id) each
    // time, so a try that committed unbeknown to us is not stored twice.
    let write = crate::db::CallWrite::emit(crate::NAME, event);
    for attempt in 0..20u32 {
        match log.emit_write(write.clone()).await {
            Ok(id) => {
                relay.notify();
                return Some(id);
            }
            Err(e) => {
                tracing::warn!(call_id = %event.call().call_id, error = %e, attempt, "cannot store call event, retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
        }
    }
    tracing::error!(call_id = %event.call().call_id, ty = event.ty(), "call event lost after retries");
    None
}

/// Places the call and reports it; returns the outbox row of its
/// `call.completed` (`None` if it could not be stored).
async fn run_call(
    ctx: Arc<CallContext>,
    cmd: DialCommand,
    log: CallLog,
    relay: OutboxRelay,
    hangup: CancellationToken,
    shutdown: CancellationToken,
) -> Option<String> {
    let base = CallRef {
        call_id: cmd.call_id.clone(),
        attempt_id: cmd.attempt_id.clone(),
        campaign_id: cmd.campaign_id.clone(),
        phone: cmd.phone.clone(),
        at_ms: 0,
        team: cmd.team.clone(),
    };
    let now = |b: &CallRef| CallRef {
        at_ms: dialstack_common::now_ms(),
        ..b.clone()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reporter = {
        let log = log.clone();
        let relay = relay.clone();
        let base = base.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let call = now(&base);
                let event = match p {
                    Progress::Dialing => CallEvent::Dialing(CallDialing { call }),
                    Progress::Ringing => CallEvent::Ringing(CallRinging { call }),
                    Progress::Answered { ring_ms } => {
                        CallEvent::Answered(CallAnswered { call, ring_ms })
                    }
                    Progress::Bridged {
                        agent_id,
                        wait_ms,
                        agent_ring_ms,
                    } => CallEvent::Bridged(dialstack_contract::CallBridged {
                        call,
                        agent_id,
                        wait_ms,
                        agent_ring_ms,
                    }),
                };
                emit(&log, &relay, &event).await;
            }
        })
    };
    let span = tracing::info_span!("call", call_id = %cmd.call_id);
    let preview = match (&ctx.bridge, &cmd.bridge) {
        (Some(b), Some(spec)) => spec.agent_id.clone().map(|a| (b.clone(), a)),
        _ => None,
    };
    let report = match preview {
        Some((bctx, agent_id)) => {
            tracing::Instrument::instrument(
                crate::call::bridge::run_preview(
                    &ctx, &bctx, &cmd, &agent_id, tx, hangup, shutdown,
                ),
                span,
            )
            .await
        }
        None => {
            tracing::Instrument::instrument(place_call(&ctx, &cmd, tx, hangup, shutdown), span)
                .await
        }
    };
    let _ = reporter.await;
    ctx.media
        .metrics
        .call_ended(report.outcome, report.sip_status);
    let done = CallCompleted {
        call: now(&base),
        outcome: report.outcome,
        reason: report.reason,
        sip_status: report.sip_status,
        ring_ms: report.ring_ms,
        talk_ms: report.talk_ms,
        rtp_sent: report.rtp_sent,
        rtp_received: report.rtp_received,
        agent_id: report.agent.as_ref().map(|a| a.agent_id.clone()),
        quality: report.quality().cloned(),
        agent: report.agent.clone(),
        ivr: report.ivr.clone(),
        amd: report.amd.clone(),
    };
    emit(&log, &relay, &CallEvent::Completed(done)).await
}

/// Renews the leases of live calls, and of ended calls whose
/// `call.completed` is still in the outbox (`repo`'s), every third of
/// `lease` until `stop`.
pub async fn run_heartbeat(
    client: Arc<SchedulerClient>,
    claimer: String,
    live: LiveCalls,
    repo: crate::db::Repo,
    lease: Duration,
    stop: CancellationToken,
) {
    // On a fixed beat, whatever the last request took; each request gets a
    // quarter of the lease, so a slow one still leaves two more tries
    // before the lease runs out. After a failed beat the next comes sooner
    // (1 s, then every 2 s): when task-scheduler or its database
    // comes back from an outage, during which every lease lapsed, the
    // leases are renewed within seconds, well inside the reaper's grace.
    let every = lease / 3;
    let mut beat = tokio::time::interval(every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let mut failures = 0u32;
    loop {
        let wait = async {
            if failures == 0 {
                beat.tick().await;
            } else {
                tokio::time::sleep(retry_after(failures, every)).await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wait => {}
        }
        let ids = live.attempts();
        if ids.is_empty() {
            failures = 0;
            continue;
        }
        // What the scheduler still holds open (`None`: a scheduler that
        // does not say); after a failed heartbeat nothing is forgotten.
        let mut held: Option<HashSet<String>> = Some(HashSet::new());
        let mut failed = false;
        for chunk in ids.chunks(2_000) {
            let renew = client.heartbeat(&claimer, chunk, lease.as_millis() as i64);
            match tokio::time::timeout(lease / 4, renew)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
            {
                Ok(beat) => match (&mut held, beat.held) {
                    (Some(all), Some(h)) => all.extend(h),
                    (h, _) => *h = None,
                },
                Err(e) => {
                    tracing::warn!(error = %e, calls = chunk.len(), failures, "lease heartbeat failed");
                    failed = true;
                }
            }
        }
        if failed {
            // Every ended call keeps its lease until a heartbeat answers.
            failures = failures.saturating_add(1);
            continue;
        }
        failures = 0;
        // Which ended calls' outcomes the broker has: read after the
        // renewal, and briefly, so that this instance's own database being
        // slow never delays a renewal.
        let settling = live.settling();
        if !settling.is_empty() {
            let rows: Vec<String> = settling.iter().map(|(_, e)| e.clone()).collect();
            match tokio::time::timeout(lease / 6, repo.unsent(&rows)).await {
                Ok(Ok(unsent)) => live.confirmed(
                    settling
                        .iter()
                        .filter(|(_, e)| !unsent.contains(e))
                        .map(|(c, _)| c.as_str()),
                    Instant::now(),
                ),
                // Kept, and renewed, until it is known.
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the outbox for ended calls"),
                Err(_) => tracing::warn!("reading the outbox for ended calls timed out"),
            }
        }
        let forgotten = live.forget_settled(held.as_ref(), Instant::now());
        if forgotten > 0 {
            tracing::debug!(
                forgotten,
                "ended calls' leases released: their outcome is in"
            );
        }
    }
}

/// How long to wait after the `failures`-th failed heartbeat in a row: 1 s,
/// then 2 s (one small request per instance), at most `every` (the regular
/// beat). A failed request during a database outage already takes up to a
/// quarter of the lease, so waiting longer would only delay the renewal
/// once the database is back.
fn retry_after(failures: u32, every: Duration) -> Duration {
    Duration::from_secs(if failures <= 1 { 1 } else { 2 }).min(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_heartbeats_are_retried_soon_then_on_the_beat() {
        let every = Duration::from_secs(10);
        let waits: Vec<u64> = (1..=5).map(|n| retry_after(n, every).as_secs()).collect();
        assert_eq!(waits, [1, 2, 2, 2, 2]);
        assert_eq!(retry_after(u32::MAX, every).as_secs(), 2);
        // A short lease: never longer than its beat.
        assert_eq!(
            retry_after(1, Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn a_call_is_reserved_once_and_an_unsure_rows_placer_is_reused_once() {
        let live = LiveCalls::default();
        let hangup = live.reserve("c-1", "a-1").expect("free");
        assert!(
            live.reserve("c-1", "a-1").is_none(),
            "a second delivery of the same dial finds it in hand"
        );
        assert_eq!(live.attempts(), ["a-1"], "its lease is renewed from now on");
        // A hang-up while the row is written reaches the reservation.
        assert!(live.hang_up("c-1"));
        assert!(hangup.is_cancelled());
        // Given back: no longer renewed, free for the next delivery, and the
        // hang-up that reached it is kept for that delivery.
        live.give_back("c-1", None, true);
        assert!(live.attempts().is_empty());
        assert!(live.hung_up_early("c-1"));
        assert!(live.reserve("c-1", "a-1").is_some());
        // A settling call is never given back (its outcome's lease is kept).
        live.settle("c-1", Some("ev-1".into()));
        live.give_back("c-1", None, false);
        assert_eq!(live.attempts(), ["a-1"]);

        // The row's write was left unsure: the next delivery writes with the
        // same placer, once; others get their own.
        live.reserve("c-2", "a-2").unwrap();
        live.give_back("c-2", Some("first".into()), false);
        assert!(!live.hung_up_early("c-2"));
        assert_eq!(live.placer_for("c-2", "second".into()), "first");
        assert_eq!(live.placer_for("c-2", "third".into()), "third");
        assert_eq!(live.placer_for("c-3", "x".into()), "x");

        // A handler dropped mid-way (its consumer abandoned it) gives its
        // reservation back through the guard.
        let hangup = live.reserve("c-4", "a-4").unwrap();
        let guard = Reservation {
            live: live.clone(),
            call_id: "c-4".into(),
            hangup: hangup.clone(),
            placer: Some("p-4".into()),
            handed_on: false,
        };
        hangup.cancel();
        drop(guard);
        assert!(!live.attempts().contains(&"a-4".to_owned()));
        assert_eq!(live.placer_for("c-4", "fresh".into()), "p-4");
        assert!(live.hung_up_early("c-4"));
        // Handed on: kept.
        let hangup = live.reserve("c-5", "a-5").unwrap();
        drop(Reservation {
            live: live.clone(),
            call_id: "c-5".into(),
            hangup,
            placer: Some("p-5".into()),
            handed_on: true,
        });
        assert!(live.attempts().contains(&"a-5".to_owned()));

        // Bounded: the oldest go first.
        for i in 0..UNSURE_RECORDS + 5 {
            live.give_back(&format!("u-{i}"), Some(format!("p-{i}")), false);
        }
        assert_eq!(live.lock().unsure_records.len(), UNSURE_RECORDS);
        assert_eq!(live.placer_for("u-0", "fresh".into()), "fresh");
        assert_eq!(
            live.placer_for(&format!("u-{}", UNSURE_RECORDS + 4), "fresh".into()),
            format!("p-{}", UNSURE_RECORDS + 4)
        );
    }

    #[test]
    fn early_hangups_are_remembered_bounded_and_used_once() {
        let live = LiveCalls::default();
        let token = live.reserve("c-live", "a-live").unwrap();
        assert!(live.hang_up("c-live"));
        assert!(token.is_cancelled());
        // A hang-up before its call starts is kept for the dial...
        assert!(!live.hang_up("c-early"));
        assert!(live.hung_up_early("c-early"));
        assert!(!live.hung_up_early("c-early"), "used once");
        // ...and the memory of them is bounded: the oldest go first.
        for i in 0..EARLY_HANGUPS + 10 {
            live.hang_up(&format!("c-{i}"));
        }
        assert!(!live.hung_up_early("c-0"));
        assert!(live.hung_up_early(&format!("c-{}", EARLY_HANGUPS + 9)));
        assert_eq!(live.lock().early_hangups.len(), EARLY_HANGUPS - 1);
        assert_eq!(live.attempts(), vec!["a-live".to_owned()]);
    }

    #[test]
    fn an_ended_call_keeps_its_lease_until_the_scheduler_has_its_outcome() {
        let t0 = Instant::now();
        let live = LiveCalls::default();
        live.reserve("c-1", "a-1").unwrap();
        live.reserve("c-2", "a-2").unwrap();
        live.reserve("c-3", "a-3").unwrap();
        live.settle("c-1", Some("ev-1".into()));
        // Ended: no longer counted as in progress, still renewed.
        assert_eq!(live.len(), 2);
        let mut renewed = live.attempts();
        renewed.sort();
        assert_eq!(renewed, ["a-1", "a-2", "a-3"]);
        assert_eq!(live.settling(), vec![("c-1".to_owned(), "ev-1".to_owned())]);
        // Not confirmed by the broker: kept whatever the scheduler says.
        assert_eq!(live.forget_settled(Some(&HashSet::new()), t0), 0);
        // The broker has it, but the scheduler still holds the attempt (the
        // event waits in its queue): kept and renewed.
        live.confirmed(["c-1"].into_iter(), t0);
        assert!(
            live.settling().is_empty(),
            "no longer looked up in the outbox"
        );
        let held: HashSet<String> = ["a-1", "a-2", "a-3"].map(String::from).into();
        assert_eq!(
            live.forget_settled(Some(&held), t0 + Duration::from_secs(60)),
            0
        );
        assert_eq!(live.attempts().len(), 3);
        // The scheduler took it in: forgotten. Live calls are never
        // forgotten, held or not.
        assert_eq!(live.forget_settled(Some(&HashSet::new()), t0), 1);
        let mut left = live.attempts();
        left.sort();
        assert_eq!(left, ["a-2", "a-3"]);
        // Held for too long (the event was lost downstream): let go, so
        // the reaper can resolve it.
        live.settle("c-2", Some("ev-2".into()));
        live.confirmed(["c-2"].into_iter(), t0);
        assert_eq!(live.forget_settled(Some(&held), t0 + SETTLE_LIMIT), 1);
        assert_eq!(live.attempts(), ["a-3"]);
        // A scheduler that does not say: the broker's word is enough.
        live.settle("c-3", Some("ev-3".into()));
        live.confirmed(["c-3"].into_iter(), t0);
        assert_eq!(live.forget_settled(None, t0), 1);
        assert!(live.attempts().is_empty());
        // An outcome that could not be stored leaves nothing to wait for.
        live.reserve("c-4", "a-4").unwrap();
        live.settle("c-4", None);
        assert!(live.attempts().is_empty() && live.is_empty());
    }
}
