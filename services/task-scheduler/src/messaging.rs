//! The call-event consumer, the dispatcher that turns pending attempts into
//! `dial` commands at the campaign's pace, and the lease reaper.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_common::bus::{Delivery, HandleError, Handler};
use dialstack_common::db::OutboxRelay;
use dialstack_common::events::CloudEvent;
use dialstack_contract::{types, CallEvent};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::Repo;
use crate::domain::Pacer;

/// Applies `call.dialing` and `call.completed` to attempts.
pub struct CallEvents {
    /// The repository.
    pub repo: Repo,
    /// Woken when an attempt completes (frees a slot).
    pub dispatcher_wake: Arc<Notify>,
}

#[async_trait::async_trait]
impl Handler for CallEvents {
    async fn handle(&self, d: &Delivery) -> Result<(), HandleError> {
        let ev = CloudEvent::from_slice(&d.payload)
            .map_err(|e| HandleError::Permanent(e.to_string()))?;
        let Some(call) = CallEvent::parse(&ev.ty, &ev.data)
            .map_err(|e| HandleError::Permanent(format!("{}: {e}", ev.ty)))?
        else {
            return Ok(());
        };
        let completed = self
            .repo
            .apply_call_event(&ev.id, &call)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        if completed.is_some() {
            self.dispatcher_wake.notify_one();
        }
        Ok(())
    }
}

/// Bindings of the scheduler's consumer.
pub const BINDINGS: &[&str] = &[types::CALL_DIALING, types::CALL_COMPLETED];

/// Queues attempts of running campaigns within their limits until shutdown.
pub async fn run_dispatcher(
    repo: Repo,
    relay: OutboxRelay,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut pacers: HashMap<String, Pacer> = HashMap::new();
    let mut campaigns = Vec::new();
    let mut last_load = Instant::now() - Duration::from_secs(60);
    loop {
        if last_load.elapsed() > Duration::from_millis(500) {
            match repo.running_campaigns().await {
                Ok(c) => campaigns = c,
                Err(e) => tracing::warn!(error = %e, "cannot load running campaigns"),
            }
            pacers.retain(|id, _| campaigns.iter().any(|c| &c.id == id));
            last_load = Instant::now();
        }
        let mut next = Duration::from_millis(200);
        for c in &campaigns {
            let now = Instant::now();
            let pacer = pacers
                .entry(c.id.clone())
                .or_insert_with(|| Pacer::new(c.max_cps, now));
            let in_flight = match repo.in_flight(&c.id).await {
                Ok(n) => n.max(0) as u64,
                Err(e) => {
                    tracing::warn!(error = %e, campaign_id = %c.id, "cannot count calls in flight");
                    continue;
                }
            };
            let allowed = pacer.allowance(now, in_flight, c.max_concurrent.max(0) as u64);
            match repo.queue_attempts(c, allowed.min(500), crate::NAME).await {
                Ok(0) => {
                    if in_flight == 0 {
                        match repo.complete_if_done(&c.id, crate::NAME).await {
                            Ok(true) => {
                                tracing::info!(campaign_id = %c.id, "campaign completed");
                                relay.notify();
                                last_load = Instant::now() - Duration::from_secs(60);
                            }
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot complete campaign"),
                        }
                    }
                }
                Ok(n) => {
                    pacer.take(n);
                    relay.notify();
                    tracing::debug!(campaign_id = %c.id, queued = n, "attempts queued");
                }
                Err(e) => tracing::warn!(error = %e, campaign_id = %c.id, "cannot queue attempts"),
            }
            next = next.min(pacer.next_token_in().max(Duration::from_millis(5)));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// Every second until shutdown, resolves attempts that no media processor
/// will finish ([`Repo::reap_stuck`]).
pub async fn run_reaper(
    repo: Repo,
    relay: OutboxRelay,
    wake: Arc<Notify>,
    queued_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match repo
            .reap_stuck(queued_timeout.as_millis() as i64, 500, crate::NAME)
            .await
        {
            Ok(c) if c.is_empty() => {}
            Ok(campaigns) => {
                tracing::warn!(
                    campaigns = campaigns.len(),
                    "attempts stuck without a media processor resolved as failed"
                );
                relay.notify();
                wake.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "reaper failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
