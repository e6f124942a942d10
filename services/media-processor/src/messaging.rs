//! The `dial` consumer: claim the attempt, record the call, place it, and
//! report every step as a call event through the outbox.

use std::sync::Arc;

use dialstack_common::bus::{Delivery, HandleError, Handler};
use dialstack_common::db::OutboxRelay;
use dialstack_common::events::{types, CallEventData, CloudEvent, DialCommand};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::{place_call, CallContext, Progress};
use crate::client::{ClaimResult, SchedulerClient};
use crate::db::Repo;

/// How long a claim holds before an undialed attempt is given up.
pub const LEASE_MS: i64 = 30_000;

/// Consumes `dial` commands.
pub struct DialHandler {
    /// Where calls go.
    pub ctx: Arc<CallContext>,
    /// Claims.
    pub client: Arc<SchedulerClient>,
    /// This instance's claimer id.
    pub claimer: String,
    /// Calls and outbox.
    pub repo: Repo,
    /// Woken after each event.
    pub relay: OutboxRelay,
    /// Calls in progress.
    pub tasks: TaskTracker,
    /// Caps calls in progress on this instance.
    pub limit: Arc<Semaphore>,
    /// Root token.
    pub shutdown: CancellationToken,
    /// Calls placed, by final outcome.
    pub active: prometheus::IntGauge,
}

fn check(cmd: &DialCommand) -> Result<(), String> {
    for (field, v) in [
        ("attempt_id", &cmd.attempt_id),
        ("call_id", &cmd.call_id),
        ("campaign_id", &cmd.campaign_id),
        ("phone", &cmd.phone),
    ] {
        if v.is_empty() || v.len() > 64 {
            return Err(format!("{field} must be 1-64 characters"));
        }
    }
    let digits = cmd.phone.strip_prefix('+').unwrap_or("");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("phone is not E.164".into());
    }
    if cmd.call_id.contains(|c: char| c.is_whitespace()) {
        return Err("call_id must not contain whitespace".into());
    }
    if cmd
        .team
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > 64)
    {
        return Err("team must be 1-64 characters".into());
    }
    Ok(())
}

#[async_trait::async_trait]
impl Handler for DialHandler {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        if ev.ty != types::DIAL {
            tracing::debug!(ty = %ev.ty, "command ignored");
            return Ok(());
        }
        let cmd: DialCommand = ev
            .data_as()
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        check(&cmd).map_err(HandleError::Permanent)?;
        match self
            .client
            .claim(&cmd.attempt_id, &self.claimer, LEASE_MS)
            .await
        {
            Ok(ClaimResult::Granted) => {}
            Ok(ClaimResult::Refused(why)) => {
                tracing::info!(call_id = %cmd.call_id, attempt_id = %cmd.attempt_id, %why, "attempt not claimed, not dialing");
                return Ok(());
            }
            Err(e) => return Err(HandleError::Transient(format!("claim: {e}"))),
        }
        let fresh = self
            .repo
            .record_call(&cmd.call_id, &cmd.attempt_id, &cmd.campaign_id)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        if !fresh {
            tracing::info!(call_id = %cmd.call_id, "dial redelivered for a call already placed, dropped");
            return Ok(());
        }
        let permit = self
            .limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HandleError::Transient("shutting down".into()))?;
        let ctx = self.ctx.clone();
        let repo = self.repo.clone();
        let relay = self.relay.clone();
        let shutdown = self.shutdown.clone();
        let active = self.active.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            active.inc();
            run_call(ctx, cmd, repo, relay, shutdown).await;
            active.dec();
        });
        Ok(())
    }
}

async fn emit(repo: &Repo, relay: &OutboxRelay, ty: &str, data: &CallEventData) {
    // An event that cannot be stored is retried: a lost call.completed would
    // leave the attempt open forever.
    for attempt in 0..20u32 {
        match repo.emit(crate::NAME, ty, data).await {
            Ok(()) => {
                relay.notify();
                return;
            }
            Err(e) => {
                tracing::warn!(call_id = %data.call_id, error = %e, attempt, "cannot store call event, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(5))).await;
            }
        }
    }
    tracing::error!(call_id = %data.call_id, %ty, "call event lost after retries");
}

async fn run_call(
    ctx: Arc<CallContext>,
    cmd: DialCommand,
    repo: Repo,
    relay: OutboxRelay,
    shutdown: CancellationToken,
) {
    let base = CallEventData {
        call_id: cmd.call_id.clone(),
        attempt_id: cmd.attempt_id.clone(),
        campaign_id: cmd.campaign_id.clone(),
        phone: cmd.phone.clone(),
        team: cmd.team.clone(),
        ..Default::default()
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reporter = {
        let repo = repo.clone();
        let relay = relay.clone();
        let base = base.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let mut data = base.clone();
                data.at_ms = dialstack_common::now_ms();
                let ty = match p {
                    Progress::Dialing => types::CALL_DIALING,
                    Progress::Ringing => types::CALL_RINGING,
                    Progress::Answered { ring_ms } => {
                        data.ring_ms = Some(ring_ms);
                        types::CALL_ANSWERED
                    }
                };
                emit(&repo, &relay, ty, &data).await;
            }
        })
    };
    let report = place_call(&ctx, &cmd, tx, shutdown).await;
    let _ = reporter.await;
    let mut data = base;
    data.at_ms = dialstack_common::now_ms();
    data.outcome = Some(report.outcome);
    data.reason = report.reason;
    data.sip_status = report.sip_status;
    data.ring_ms = Some(report.ring_ms);
    data.talk_ms = Some(report.talk_ms);
    data.rtp_sent = Some(report.rtp_sent);
    data.rtp_received = Some(report.rtp_received);
    emit(&repo, &relay, types::CALL_COMPLETED, &data).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_commands_are_refused() {
        let good = DialCommand {
            attempt_id: "a".into(),
            call_id: "c".into(),
            campaign_id: "k".into(),
            phone: "+14155550101".into(),
            caller_id: "+14155550100".into(),
            talk_time_ms: 1,
            ring_timeout_ms: 15_000,
            team: None,
        };
        assert!(check(&good).is_ok());
        let mut bad = good.clone();
        bad.phone = "14155550101".into();
        assert!(check(&bad).is_err());
        let mut bad = good.clone();
        bad.call_id = "a b".into();
        assert!(check(&bad).is_err());
        let mut bad = good.clone();
        bad.team = Some(String::new());
        assert!(check(&bad).is_err());
        let mut bad = good;
        bad.attempt_id = String::new();
        assert!(check(&bad).is_err());
    }
}
